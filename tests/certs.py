"""Test certificates, made at test time with the ``openssl`` command line.

:func:`make_certs` writes, into a directory:

- ``ca.pem`` / ``ca.key``: a CA;
- ``server.pem`` / ``server.key``: a server certificate signed by that CA, for
  ``127.0.0.1`` and ``localhost`` (subjectAltName IP and DNS);
- ``client.pem`` / ``client.key``: a client certificate signed by the same CA
  (CN ``mplog-client``, also ``localhost`` in its subjectAltName, so that receivers which
  match the peer name, such as rsyslog's ``name`` auth mode, accept it);
- ``wrong-ca.pem`` / ``wrong-ca.key``: another CA that signed nothing here.

EC P-256 keys: fast to make, and every TLS library in the tests (OpenSSL in Python,
rsyslog's ossl driver, librelp) accepts them. Certificates are valid from a day ago (no
clock-skew surprises) for 30 days.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess

OPENSSL = shutil.which("openssl")


@dataclasses.dataclass(frozen=True)
class Certs:
    """Paths (as str) of the files :func:`make_certs` wrote."""

    dir: pathlib.Path
    ca: str
    server: str
    server_key: str
    client: str
    client_key: str
    wrong_ca: str


def _run(*args: str, cwd: pathlib.Path) -> None:
    assert OPENSSL is not None
    done = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")


def _key(name: str, d: pathlib.Path) -> None:
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", f"{name}.key", cwd=d)


def _ca(name: str, cn: str, d: pathlib.Path) -> None:
    _key(name, d)
    (d / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:TRUE\n"
        "keyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n"
    )
    _run("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=d)
    _run("x509", "-req", "-in", f"{name}.csr", "-signkey", f"{name}.key", "-days", "30",
         "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)


def _leaf(name: str, cn: str, san: str, usage: str, d: pathlib.Path) -> None:
    _key(name, d)
    (d / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyAgreement\n"
        f"extendedKeyUsage={usage}\n"
        f"subjectAltName={san}\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _run("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=d)
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)


def make_certs(d: pathlib.Path) -> Certs:
    """Write a CA, a server and a client certificate, and a wrong CA into *d*."""
    if OPENSSL is None:
        raise AssertionError("the openssl command line is needed: apt-get install openssl")
    d.mkdir(parents=True, exist_ok=True)
    _ca("ca", "mplog test CA", d)
    _ca("wrong-ca", "mplog wrong CA", d)
    _leaf("server", "localhost", "IP:127.0.0.1,DNS:localhost", "serverAuth", d)
    _leaf("client", "mplog-client", "DNS:mplog-client,DNS:localhost", "clientAuth", d)
    for f in d.glob("*.key"):
        f.chmod(0o600)
    return Certs(
        d, str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"),
        str(d / "client.pem"), str(d / "client.key"), str(d / "wrong-ca.pem"),
    )
