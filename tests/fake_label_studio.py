"""A local fake Label Studio (HTTP on 127.0.0.1) for tests: projects, exports, uploaded images."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

from flask import Flask, jsonify, request
from werkzeug.serving import make_server


class FakeLabelStudio:
    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.projects: Dict[int, Dict[str, Any]] = {}
        self.exports: Dict[int, List[Dict[str, Any]]] = {}
        self.files: Dict[str, bytes] = {}
        self.fail_export = False
        self.requests: List[str] = []
        app = Flask("fake-label-studio")

        def authorized() -> bool:
            return request.headers.get("Authorization") == f"Token {self.token}"

        @app.get("/api/projects/<int:pid>")
        def project(pid):
            self.requests.append(request.path)
            if not authorized():
                return jsonify(detail="Authentication credentials were not provided."), 401
            if pid not in self.projects:
                return jsonify(detail="Not found."), 404
            return jsonify(self.projects[pid])

        @app.get("/api/projects/<int:pid>/export")
        def export(pid):
            self.requests.append(request.path)
            if not authorized():
                return jsonify(detail="Authentication credentials were not provided."), 401
            if self.fail_export:
                return jsonify(detail="boom"), 500
            return jsonify(self.exports.get(pid, []))

        @app.get("/data/upload/<path:name>")
        def upload(name):
            self.requests.append(request.path)
            if not authorized():
                return jsonify(detail="no"), 401
            key = f"/data/upload/{name}"
            if key not in self.files:
                return jsonify(detail="Not found."), 404
            return self.files[key], 200, {"Content-Type": "image/png"}

        self.app = app
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeLabelStudio":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
