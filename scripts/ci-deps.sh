#!/bin/sh
# Debian packages the test suite needs (real receivers and servers): rsyslog with RELP
# and TLS from apt, syslog-ng unpacked beside it (the two packages conflict, so apt will not
# install both; shared/recipes/real-receivers.md), redis-server as the celery broker, and
# tmux (a real terminal for the test of mplog top).
# Idempotent and quiet; does nothing when all is there. Needs root, or sudo.
set -eu
SNG_ROOT=${MPLOG_SYSLOG_NG_ROOT:-/opt/syslog-ng-root}
need=""
command -v rsyslogd >/dev/null 2>&1 || need="$need rsyslog"
ls /usr/lib/*/rsyslog/imrelp.so >/dev/null 2>&1 || need="$need rsyslog-relp"
# TLS tests: rsyslog's OpenSSL stream driver (imtcp over TLS; imrelp's TLS is in librelp)
# and the openssl command line, which makes the test certificates (tests/certs.py).
ls /usr/lib/*/rsyslog/lmnsd_ossl.so >/dev/null 2>&1 || need="$need rsyslog-openssl"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need="$need redis-server"
command -v tmux >/dev/null 2>&1 || need="$need tmux"  # a real terminal for mplog top's test
[ -x "$SNG_ROOT/usr/sbin/syslog-ng" ] || need="$need libivykis0 libnet1 libjson-c5 libglib2.0-0 libwrap0 libpcre3 libcap2"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
echo "installing Debian packages:$need" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
# --no-install-recommends: no service is wanted running; the tests start their own
$SUDO apt-get install -y -q --no-install-recommends $need >/dev/null
if [ ! -x "$SNG_ROOT/usr/sbin/syslog-ng" ]; then
    dl=$(mktemp -d); $SUDO chown _apt "$dl" 2>/dev/null || true
    (cd "$dl" && apt-get download -q syslog-ng-core >/dev/null)
    $SUDO dpkg -x "$dl"/syslog-ng-core_*.deb "$SNG_ROOT"
    rm -rf "$dl"
fi
