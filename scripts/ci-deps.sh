#!/bin/sh
# Debian packages the test suite needs (real receivers). Idempotent and quiet; skipped
# when everything is already there.
set -eu
need=""
command -v rsyslogd >/dev/null 2>&1 || need="$need rsyslog"
[ -e /usr/lib/x86_64-linux-gnu/rsyslog/imrelp.so ] || ls /usr/lib/*/rsyslog/imrelp.so >/dev/null 2>&1 || need="$need rsyslog-relp"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
echo "installing Debian packages:$need" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -q $need >/dev/null
