"""A real Kubernetes control plane on 127.0.0.1 for tests: etcd, kube-apiserver, kube-controller-manager.

Found the way controller-runtime's envtest finds it: `KUBEBUILDER_ASSETS` names a folder with
`kube-apiserver` and `kube-controller-manager` (and `etcd`, else etcd from PATH). `.ci/run` unpacks
the project's copies there. Certificates, keys and kubeconfigs are made in a temporary folder.
There is no kubelet: `kubelet.py` plays one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.helpers import free_port, wait_for

ASSETS_ENV = "KUBEBUILDER_ASSETS"
SERVICE_RANGE = "198.51.100.0/24"  # documentation range: only ever written into objects
START_TIMEOUT_S = 60.0


def assets() -> tuple[dict[str, Path], str]:
    """The binaries, or ({}, why they are missing)."""
    folder = os.environ.get(ASSETS_ENV)
    if not folder:
        return {}, f"${ASSETS_ENV} is not set (a folder with kube-apiserver, kube-controller-manager, etcd; see docs/kubernetes.md)"
    found: dict[str, Path] = {}
    for name in ("kube-apiserver", "kube-controller-manager", "etcd"):
        path = Path(folder) / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            on_path = shutil.which(name) if name == "etcd" else None
            if on_path is None:
                return {}, f"{name} is not in ${ASSETS_ENV}={folder}" + (" nor on PATH" if name == "etcd" else "")
            path = Path(on_path)
        found[name] = path
    if shutil.which("kubectl") is None:  # the tests bootstrap namespaces as users do, with kubectl apply -k
        return {}, "kubectl is not on PATH"
    return found, ""


# Certificates.


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name, issuer_key: rsa.RSAPrivateKey, *,
          ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=not ca, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
            data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(parts)


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path

    @classmethod
    def make(cls, folder: Path) -> Pki:
        folder.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca_name = _name("aviary-test-ca")
        ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
        server_key, admin_key, sa_key = _key(), _key(), _key()
        server = _cert(_name("kube-apiserver"), server_key, ca_name, ca_key, server=True)
        admin = _cert(_name("aviary-test-admin", "system:masters"), admin_key, ca_name, ca_key)
        files = {
            "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
            "server.crt": server.public_bytes(serialization.Encoding.PEM),
            "server.key": _pem_key(server_key),
            "admin.crt": admin.public_bytes(serialization.Encoding.PEM),
            "admin.key": _pem_key(admin_key),
            "sa.key": _pem_key(sa_key),
            "sa.pub": sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo),
        }
        for name, data in files.items():
            (folder / name).write_bytes(data)
            (folder / name).chmod(0o600)
        p = folder.__truediv__
        return cls(p("ca.crt"), p("server.crt"), p("server.key"), p("admin.crt"), p("admin.key"), p("sa.key"), p("sa.pub"))


def kubeconfig(path: Path, url: str, ca: Path, *, token: str | None = None,
               cert: tuple[Path, Path] | None = None, namespace: str = "default") -> Path:
    user: dict[str, str] = {"token": token} if token else {}
    if cert:
        user = {"client-certificate": str(cert[0]), "client-key": str(cert[1])}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": url, "certificate-authority": str(ca)}}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
    }))
    path.chmod(0o600)
    return path


@dataclass
class ControlPlane:
    root: Path
    url: str
    pki: Pki
    admin_kubeconfig: Path
    processes: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def admin(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify
        session.verify = str(self.pki.ca)
        session.cert = (str(self.pki.admin_cert), str(self.pki.admin_key))
        return session

    def kubectl(self, *args: str, kubeconfig_path: Path | None = None, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        binary = shutil.which("kubectl")
        assert binary, "kubectl is not on PATH"
        return subprocess.run(  # noqa: S603 - kubectl with our own arguments
            [binary, f"--kubeconfig={kubeconfig_path or self.admin_kubeconfig}", *args],
            input=stdin, capture_output=True, text=True, check=check, timeout=60,
        )

    def token(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A bound token for a ServiceAccount, from the TokenRequest API, as a pod would get."""
        response = self.admin().post(
            f"{self.url}/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                  "spec": {"expirationSeconds": seconds}}, timeout=10,
        )
        response.raise_for_status()
        return str(response.json()["status"]["token"])

    def check_alive(self) -> None:
        for name, process, log in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()[-2000:]}")


def _start(name: str, argv: list[str], root: Path) -> tuple[str, subprocess.Popen[bytes], Path]:
    log = root / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,  # noqa: S603
                                   start_new_session=True)
    return name, process, log


def _stop(processes: list[tuple[str, subprocess.Popen[bytes], Path]]) -> None:
    for _name, process, _log in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for _name, process, _log in reversed(processes):
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def control_plane(root: Path, binaries: dict[str, Path]) -> Iterator[ControlPlane]:
    pki = Pki.make(root / "pki")
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    url = f"https://127.0.0.1:{api_port}"
    admin_kubeconfig = kubeconfig(root / "admin.kubeconfig", url, pki.ca, cert=(pki.admin_cert, pki.admin_key))
    plane = ControlPlane(root, url, pki, admin_kubeconfig)
    try:
        plane.processes.append(_start("etcd", [
            str(binaries["etcd"]), f"--data-dir={root / 'etcd'}", "--name=test",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
        ], root))
        plane.processes.append(_start("kube-apiserver", [
            str(binaries["kube-apiserver"]), f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--tls-cert-file={pki.server_cert}", f"--tls-private-key-file={pki.server_key}",
            f"--client-ca-file={pki.ca}", f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_RANGE}", "--authorization-mode=RBAC",
            "--endpoint-reconciler-type=none", "--disable-admission-plugins=ServiceAccount",
            f"--cert-dir={root / 'apiserver-certs'}",
        ], root))
        session = plane.admin()

        def healthy() -> bool:
            plane.check_alive()
            try:
                return session.get(f"{url}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for("kube-apiserver /readyz", healthy, timeout_s=START_TIMEOUT_S, every_s=0.2)
        plane.processes.append(_start("kube-controller-manager", [
            str(binaries["kube-controller-manager"]), f"--kubeconfig={admin_kubeconfig}",
            f"--authentication-kubeconfig={admin_kubeconfig}", f"--authorization-kubeconfig={admin_kubeconfig}",
            f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca}",
            "--use-service-account-credentials=true", "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}", f"--cert-dir={root / 'kcm-certs'}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            # A test's pods stay on a node for a few minutes at most: no evictions, short syncs.
            "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route",
            "--concurrent-deployment-syncs=5", "--concurrent-replicaset-syncs=5",
        ], root))
        yield plane
    finally:
        _stop(plane.processes)
