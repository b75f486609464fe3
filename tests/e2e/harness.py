"""A real Label Studio 1.23.2 and the SAFIRE backend on loopback ports, for the e2e tests and screenshots.

    ls = LabelStudio(workdir, files_root, log_path)        # data dir, ports, env: see LabelStudio
    ls.start()                                             # installs LS first if needed (scripts/labelstudio.sh)
    client = ls.client()                                   # session login -> Personal Access Token -> LSClient
    backend = Backend(ls.url, client.pat, model_dir, log_path).start()   # `safire serve`, as the README says
    ...
    backend.stop(); ls.stop()                              # by process group id, SIGTERM then SIGKILL

Nothing here is specific to pytest: ``scripts/screenshots.py`` uses the same classes.

Label Studio runs from its own venv outside the repo (``SAFIRE_LS_VENV``, default
``~/.cache/safire-studio/ls-venv``), created by ``scripts/labelstudio.sh install``. Each run gets a
fresh data directory; to skip the ~80 s of migrations of a first start, the freshly migrated database
(holding only the test user) is kept as a template in ``SAFIRE_LS_CACHE`` (default
``~/.cache/safire-studio``) and copied into the next run's data directory (``SAFIRE_LS_TEMPLATE=0``
disables that).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import requests

REPO = Path(__file__).resolve().parents[2]
LS_VERSION = "1.23.2"
USERNAME = "e2e@safire-studio.test"
PASSWORD = "safire-e2e-password"


class HarnessError(RuntimeError):
    """Label Studio or the backend could not be installed, started or reached."""


def cache_dir() -> Path:
    return Path(os.environ.get("SAFIRE_LS_CACHE") or Path.home() / ".cache" / "safire-studio")


def ls_venv() -> Path:
    return Path(os.environ.get("SAFIRE_LS_VENV") or cache_dir() / "ls-venv")


def ensure_label_studio(timeout: float = 1800.0) -> Path:
    """Install Label Studio into its venv unless present (``scripts/labelstudio.sh``); its executable."""
    env = dict(os.environ, SAFIRE_LS_VENV=str(ls_venv()), SAFIRE_LS_VERSION=LS_VERSION)
    try:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "labelstudio.sh"), "path"], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"installing label-studio=={LS_VERSION} took more than {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise HarnessError(f"cannot install label-studio=={LS_VERSION} into {ls_venv()} "
                           f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    exe = Path(proc.stdout.strip().splitlines()[-1])
    if not exe.is_file():
        raise HarnessError(f"scripts/labelstudio.sh reported {exe}, which does not exist")
    return exe


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env(drop_prefixes=("LABEL_STUDIO_", "HEARTEX_", "SAFIRE_", "ML_SERVER_", "BASIC_AUTH_"),
               drop=("PORT", "HOST", "MODEL_DIR", "WORKERS", "THREADS", "LOG_LEVEL", "LOCAL_FILES_DOCUMENT_ROOT",
                     "LOCAL_FILES_SERVING_ENABLED", "START_TRAINING_EACH_N_UPDATES", "SENTRY_DSN",
                     "ML_TIMEOUT_PREDICT", "DJANGO_DB", "DJANGO_SETTINGS_MODULE")) -> Dict[str, str]:
    """The caller's environment without settings that would change what the servers do."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(drop_prefixes) and k not in drop}


class ManagedProcess:
    """A child in its own session (process group = its pid), logging to a file; stopped by group id."""

    def __init__(self, name: str, cmd: List[str], env: Mapping[str, str], log_path: Path, cwd: Path):
        self.name, self.cmd, self.env, self.log_path, self.cwd = name, cmd, dict(env), Path(log_path), Path(cwd)
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=str(self.cwd), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace`` s; safe to call twice."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the child's pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; give the rest of its group a moment, then make sure
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.1)
            if not _group_alive(pgid):
                break
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def wait_http(url: str, proc: ManagedProcess, timeout: float, ok=lambda r: r.status_code == 200) -> float:
    """Poll ``url`` until ``ok(response)``; seconds waited. Fails at once if the process exits."""
    t0 = time.monotonic()
    last = "no answer"
    while time.monotonic() - t0 < timeout:
        if not proc.alive():
            raise HarnessError(f"{proc.name} exited (code {proc.proc.returncode}) before {url} answered; "
                               f"log {proc.log_path}:\n{proc.log_tail()}")
        try:
            r = requests.get(url, timeout=5)
            if ok(r):
                return time.monotonic() - t0
            last = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            last = type(e).__name__
        time.sleep(0.5)
    raise HarnessError(f"{proc.name}: {url} not ready after {timeout:.0f} s ({last}); log {proc.log_path}:\n"
                       f"{proc.log_tail()}")


# ------------------------------------------------------------------------------------------------
# Label Studio
# ------------------------------------------------------------------------------------------------


class LSClient:
    """Label Studio REST with a Personal Access Token (refreshed to a Bearer access token as needed)."""

    def __init__(self, url: str, pat: str, timeout: float = 600.0):
        self.url = url.rstrip("/")
        self.pat = pat
        self.timeout = timeout
        self.session = requests.Session()
        self._access: Optional[str] = None
        self._access_at = 0.0

    def _bearer(self, force: bool = False) -> str:
        # access tokens of LS 1.23.2 live 5 minutes: refresh after 4
        if force or self._access is None or time.monotonic() - self._access_at > 240:
            r = self.session.post(f"{self.url}/api/token/refresh/", json={"refresh": self.pat}, timeout=30)
            if r.status_code != 200:
                raise HarnessError(f"PAT refresh failed: HTTP {r.status_code} {r.text[:300]}")
            self._access, self._access_at = r.json()["access"], time.monotonic()
        return self._access

    def request(self, method: str, path: str, expect=(200, 201, 204), **kw) -> requests.Response:
        url = path if path.startswith("http") else f"{self.url}{path}"
        kw.setdefault("timeout", self.timeout)
        for attempt in (0, 1):
            headers = dict(kw.pop("headers", {}) or {})
            headers["Authorization"] = f"Bearer {self._bearer(force=attempt == 1)}"
            files = kw.get("files")
            if files:  # rewind uploads for a retry
                for v in files.values():
                    fobj = v[1] if isinstance(v, tuple) else v
                    if hasattr(fobj, "seek"):
                        fobj.seek(0)
            r = self.session.request(method, url, headers=headers, **kw)
            if r.status_code != 401:
                break
        if expect and r.status_code not in expect:
            raise HarnessError(f"{method} {path}: HTTP {r.status_code} {r.text[:1000]}")
        return r

    def get(self, path: str, **kw) -> Any:
        return self.request("GET", path, **kw).json()

    def post(self, path: str, json_body: Any = None, **kw) -> Any:
        r = self.request("POST", path, json=json_body, **kw)
        return r.json() if r.content else None


class LabelStudio:
    """``label-studio start`` on 127.0.0.1 with a throwaway data dir and the settings a local backend needs.

    Environment given to Label Studio (the rest of the caller's environment minus LABEL_STUDIO_*):

    ==========================================  =====================================================
    LABEL_STUDIO_USERNAME / _PASSWORD            the user, created at start
    LABEL_STUDIO_BASE_DATA_DIR                   the data dir (``--data-dir`` alone still creates
                                                 ``~/.local/share/label-studio``)
    LABEL_STUDIO_ML_BLOCK_LOCAL_IP=false         allow a backend on 127.0.0.1
    LABEL_STUDIO_SSRF_PROTECTION_ENABLED=false   ... and its automatic ``/webhook``
    LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED     ``/data/local-files/?d=`` under ``files_root``
    LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    COLLECT_ANALYTICS=false, LATEST_VERSION_CHECK=false, SENTRY_DSN= / FRONTEND_SENTRY_DSN=
                                                 no outbound traffic (version check, Sentry)
    ML_TIMEOUT_PREDICT                           seconds LS waits for ``/predict`` (default 300 here:
                                                 a slow CPU under load, "Retrieve Predictions" sends
                                                 all selected tasks in one request)
    ==========================================  =====================================================
    """

    def __init__(self, workdir: Path, files_root: Path, log_path: Path, port: Optional[int] = None,
                 predict_timeout: float = 300.0, start_timeout: Optional[float] = None):
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "ls-data"
        self.files_root = Path(files_root)
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.predict_timeout = predict_timeout
        self.start_timeout = start_timeout or float(os.environ.get("SAFIRE_E2E_LS_START_TIMEOUT", "900"))
        self.proc: Optional[ManagedProcess] = None
        self.timings: Dict[str, float] = {}
        self.used_template = False
        self._client: Optional[LSClient] = None

    # -- template database (migrations take ~80 s on a first start) ----------------------------------
    @staticmethod
    def template_path() -> Path:
        return cache_dir() / f"ls-{LS_VERSION}-template.sqlite3"

    @staticmethod
    def _templates_enabled() -> bool:
        return os.environ.get("SAFIRE_LS_TEMPLATE", "1").strip().lower() not in ("0", "false", "no", "off")

    def _db(self) -> Path:
        return self.data_dir / "label_studio.sqlite3"

    def _save_template(self) -> None:
        tpl = self.template_path()
        tpl.parent.mkdir(parents=True, exist_ok=True)
        tmp = tpl.with_name(f".{tpl.name}.{os.getpid()}.tmp")
        src = sqlite3.connect(f"file:{self._db()}?mode=ro", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(str(tmp))
            with dst:
                src.backup(dst)  # a consistent snapshot even while LS has the file open
            dst.close()
        finally:
            src.close()
        os.replace(tmp, tpl)

    # -- lifecycle -------------------------------------------------------------------------------------
    def env(self) -> Dict[str, str]:
        env = _clean_env()
        env.update({
            "LABEL_STUDIO_USERNAME": USERNAME,
            "LABEL_STUDIO_PASSWORD": PASSWORD,
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.files_root),
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_SENTRY_DSN": "",
            "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_ML_TIMEOUT_PREDICT": str(self.predict_timeout),
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self) -> "LabelStudio":
        t0 = time.monotonic()
        exe = ensure_label_studio()
        self.timings["install"] = time.monotonic() - t0
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.files_root.mkdir(parents=True, exist_ok=True)
        tpl = self.template_path()
        if self._templates_enabled() and tpl.is_file() and not self._db().exists():
            shutil.copyfile(tpl, self._db())
            self.used_template = True
        cmd = [str(exe), "start", "--no-browser", "--data-dir", str(self.data_dir), "--port", str(self.port),
               "--internal-host", "127.0.0.1", "--log-level", "INFO"]
        self.proc = ManagedProcess("label-studio", cmd, self.env(), self.log_path, self.workdir).start()
        t1 = time.monotonic()
        wait_http(f"{self.url}/health", self.proc, self.start_timeout,
                  ok=lambda r: r.status_code == 200 and "UP" in r.text)
        self.timings["start"] = time.monotonic() - t1
        if self._templates_enabled() and not self.used_template:
            try:
                self._save_template()
            except (sqlite3.Error, OSError) as e:  # only an optimisation
                print(f"[e2e] could not save the Label Studio template database: {e}", file=sys.stderr)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    # -- auth ------------------------------------------------------------------------------------------
    def login_session(self) -> requests.Session:
        """A browser-like session logged in through the ``/user/login/`` form (CSRF cookie + token)."""
        s = requests.Session()
        r = s.get(f"{self.url}/user/login/", timeout=60)
        csrf = s.cookies.get("csrftoken")
        if r.status_code != 200 or not csrf:
            raise HarnessError(f"GET /user/login/: HTTP {r.status_code}, csrftoken cookie {'set' if csrf else 'missing'}")
        r = s.post(f"{self.url}/user/login/", data={"email": USERNAME, "password": PASSWORD,
                                                   "csrfmiddlewaretoken": csrf},
                   headers={"Referer": f"{self.url}/user/login/"}, allow_redirects=False, timeout=60)
        if r.status_code != 302 or "sessionid" not in s.cookies:
            raise HarnessError(f"login as {USERNAME} failed: HTTP {r.status_code} (expected a 302 redirect)")
        return s

    def create_pat(self) -> str:
        """A Personal Access Token: legacy tokens are off for new organisations, so log in and POST /api/token/."""
        s = self.login_session()
        r = s.post(f"{self.url}/api/token/", headers={"X-CSRFToken": s.cookies.get("csrftoken", ""),
                                                      "Referer": f"{self.url}/"}, timeout=60)
        if r.status_code != 201:
            raise HarnessError(f"POST /api/token/: HTTP {r.status_code} {r.text[:300]}")
        return r.json()["token"]

    def client(self) -> LSClient:
        if self._client is None:
            self._client = LSClient(self.url, self.create_pat())
        return self._client


# ------------------------------------------------------------------------------------------------
# the SAFIRE backend
# ------------------------------------------------------------------------------------------------


def safire_command() -> Path:
    """The ``safire`` entry point of the venv running this code (the project's .venv under make test)."""
    exe = Path(sys.executable).parent / "safire"
    if exe.is_file():
        return exe
    found = shutil.which("safire")
    if found:
        return Path(found)
    raise HarnessError("the `safire` command is not installed in this environment (run `make env`)")


class Backend:
    """``safire serve`` (gunicorn) with settings as environment variables, as the README tells a user.

    ``extra_env`` adds or overrides settings. ``SAFIRE_E2E_CHECKPOINT`` (if set) becomes the backend's
    ``SAFIRE_CHECKPOINT``, to run the suite against other weights than the embedded default.
    """

    def __init__(self, ls_url: str, api_key: str, model_dir: Path, log_path: Path, port: Optional[int] = None,
                 extra_env: Optional[Mapping[str, str]] = None, start_timeout: float = 300.0):
        self.ls_url, self.api_key = ls_url, api_key
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(extra_env or {})
        self.start_timeout = start_timeout
        self.proc: Optional[ManagedProcess] = None
        self.timings: Dict[str, float] = {}

    def env(self) -> Dict[str, str]:
        env = _clean_env()
        env.update({
            "LABEL_STUDIO_URL": self.ls_url,
            "LABEL_STUDIO_API_KEY": self.api_key,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "MODEL_DIR": str(self.model_dir),
            "SAFIRE_THREADS": "1",
            "SAFIRE_TRAIN_THREADS": "1",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        if os.environ.get("SAFIRE_E2E_CHECKPOINT"):
            env["SAFIRE_CHECKPOINT"] = os.environ["SAFIRE_E2E_CHECKPOINT"]
        env.update(self.extra_env)
        return env

    def start(self) -> "Backend":
        self.model_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(safire_command()), "serve"]
        t0 = time.monotonic()
        self.proc = ManagedProcess("safire serve", cmd, self.env(), self.log_path, REPO).start()
        wait_http(f"{self.url}/health", self.proc, self.start_timeout)
        self.timings["start"] = time.monotonic() - t0
        return self

    def get(self, path: str, expect=(200,)) -> Any:
        r = requests.get(f"{self.url}{path}", timeout=60)
        if r.status_code not in expect:
            raise HarnessError(f"backend GET {path}: HTTP {r.status_code} {r.text[:500]}")
        return r.json()

    def post(self, path: str, body: Any, timeout: float = 600.0) -> Any:
        r = requests.post(f"{self.url}{path}", json=body, timeout=timeout)
        if r.status_code != 200:
            raise HarnessError(f"backend POST {path}: HTTP {r.status_code} {r.text[:500]}")
        return r.json()

    def job_pids(self) -> List[int]:
        """Process ids of retraining jobs still running (they run in their own sessions)."""
        pids = []
        for rec_path in self.model_dir.glob("*/jobs/*.json"):
            try:
                rec = json.loads(rec_path.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("state") in ("queued", "running") and rec.get("pid"):
                pids.append(int(rec["pid"]))
        return pids

    def stop(self) -> None:
        job_pids = self.job_pids()
        if self.proc is not None:
            self.proc.stop()
        for pid in job_pids:  # children of the backend in their own session: end them by their id
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


# ------------------------------------------------------------------------------------------------
# CLI: both servers for manual testing
# ------------------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    """``python tests/e2e/harness.py up [--ls-port N] [--backend-port N]``: Label Studio + backend
    until Ctrl-C, with a throwaway data dir; prints the URLs, the login and the token."""
    import argparse
    import tempfile

    p = argparse.ArgumentParser(prog="tests/e2e/harness.py")
    p.add_argument("command", choices=["up"])
    p.add_argument("--ls-port", type=int, default=None)
    p.add_argument("--backend-port", type=int, default=None)
    p.add_argument("--workdir", default=None, help="data dir, files and logs (default: a new temp dir)")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="safire-ls-"))
    ls = LabelStudio(work, work / "files", work / "label-studio.log", port=args.ls_port)
    backend = None
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        ls.start()
        client = ls.client()
        backend = Backend(ls.url, client.pat, work / "models", work / "backend.log", port=args.backend_port).start()
        print(f"Label Studio  {ls.url}  (user {USERNAME} / {PASSWORD})\n"
              f"backend       {backend.url}  (connect it in a project: Settings > Model)\n"
              f"local files   {ls.files_root}  (/data/local-files/?d=<path below it>)\n"
              f"API token     {client.pat}\nlogs          {work}\nCtrl-C stops both.", flush=True)
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if backend is not None:
            backend.stop()
        ls.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
