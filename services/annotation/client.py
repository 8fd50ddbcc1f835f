"""Label Studio's REST API, the part the bridge uses, over plain HTTP (the standard library).

Authentication is Label Studio's API token (``Authorization: Token <key>``; an open-source
server accepts it once its organisation allows legacy tokens, which ``--enable-legacy-api-token``
turns on at its first start). The token is never part of an error message, a log line or a
span: errors carry the method, the path, the status and the start of the answer.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import SecretStr

from shared.ports import Unavailable

__all__ = ["LabelStudioClient", "StudioError", "StudioUnavailable"]

PAGE = 100


class StudioError(RuntimeError):
    """Label Studio refused a request or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def of(cls, message: str, status: int | None = None) -> StudioError:
        """The error for an answer of ``status`` (None: no answer): ``StudioUnavailable``
        when the same request may succeed later (unreachable, 5xx, 429)."""
        transient = status is None or status >= 500 or status == 429
        return (StudioUnavailable if transient else StudioError)(message, status)


class StudioUnavailable(StudioError, Unavailable):
    """Label Studio did not answer, or answered that it cannot now: retried by the loops."""


class LabelStudioClient:
    def __init__(self, url: str, token: SecretStr, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    def request(
        self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None
    ) -> Any:
        """The decoded JSON answer (None when empty). Raises ``StudioError``."""
        target = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(target, data=data, method=method)
        req.add_header("Authorization", "Token " + self._token.get_secret_value())
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise StudioError.of(f"{method} {path}: {exc.code} {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise StudioError.of(f"{method} {path}: {exc}") from None
        return json.loads(raw) if raw.strip() else None

    # --- projects and webhooks ----------------------------------------------------------

    def projects(self) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            answer = self.request("GET", "/api/projects/", query={"page": page, "page_size": PAGE})
            rows = answer.get("results", []) if isinstance(answer, dict) else answer or []
            yield from rows
            if not isinstance(answer, dict) or not answer.get("next"):
                return
            page += 1

    def ensure_project(self, title: str, label_config: str) -> int:
        """The id of the project titled ``title``, created with ``label_config`` if there is
        none (an existing project keeps its interface)."""
        for project in self.projects():
            if project.get("title") == title:
                return int(project["id"])
        made = self.request(
            "POST", "/api/projects/", {"title": title, "label_config": label_config}
        )
        return int(made["id"])

    def wait_for_project(self, title: str, label_config: str, timeout_s: float = 300.0) -> int:
        """``ensure_project``, retried while Label Studio is unreachable or starting (its
        first start migrates its database for a minute or so). A refusal (a wrong token)
        is raised at once."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.ensure_project(title, label_config)
            except StudioUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2.0)

    def ensure_webhook(self, project: int, url: str, actions: Sequence[str]) -> int:
        """The id of the project's webhook to ``url``, created if there is none."""
        hooks = self.request("GET", "/api/webhooks/", query={"project": project}) or []
        for hook in hooks:
            if hook.get("url") == url and hook.get("project") in (project, None):
                return int(hook["id"])
        made = self.request(
            "POST",
            "/api/webhooks/",
            {
                "project": project,
                "url": url,
                "send_payload": True,
                "send_for_all_actions": False,
                "is_active": True,
                "actions": list(actions),
            },
        )
        return int(made["id"])

    # --- tasks and annotations ----------------------------------------------------------

    def import_tasks(self, project: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        answer = self.request(
            "POST",
            f"/api/projects/{project}/import",
            list(tasks),
            query={"return_task_ids": "true"},
        )
        return [int(t) for t in answer.get("task_ids", [])]

    def task(self, task: int) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/tasks/{task}/"))

    def annotation(self, annotation: int) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/annotations/{annotation}/"))

    def tasks(
        self,
        project: int,
        *,
        updated_after: str | None = None,
        frame_id: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The tasks of ``project``, each with its data and annotations, page by page; only
        those updated after ``updated_after`` (ISO 8601: a task is updated when one of its
        annotations is) or of ``frame_id``, when given (Label Studio's Data Manager
        filters)."""
        items = []
        if updated_after is not None:
            items.append(
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater",
                    "type": "Datetime",
                    "value": updated_after,
                }
            )
        if frame_id is not None:
            items.append(
                {
                    "filter": "filter:tasks:data.frame_id",
                    "operator": "equal",
                    "type": "String",
                    "value": frame_id,
                }
            )
        query: dict[str, Any] = {"project": project, "fields": "all", "page_size": PAGE}
        if items:
            query["query"] = json.dumps({"filters": {"conjunction": "and", "items": items}})
        page, seen = 1, 0
        while True:
            answer = self.request("GET", "/api/tasks/", query={**query, "page": page})
            rows = answer.get("tasks", []) if isinstance(answer, dict) else answer or []
            yield from rows
            seen += len(rows)
            total = answer.get("total") if isinstance(answer, dict) else None
            if not rows or len(rows) < PAGE or (isinstance(total, int) and seen >= total):
                return
            page += 1

    def annotated_tasks(
        self, project: int, updated_after: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The tasks of ``project`` that have an annotation (updated after
        ``updated_after``, when given), each with its annotations."""
        return (t for t in self.tasks(project, updated_after=updated_after) if t.get("annotations"))

    def find_task(self, project: int, frame_id: str) -> int | None:
        """The id of ``project``'s task of ``frame_id``, if there is one."""
        for task in self.tasks(project, frame_id=frame_id):
            if (task.get("data") or {}).get("frame_id") == frame_id:
                return int(task["id"])
        return None

    def annotations(self, task: int) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/api/tasks/{task}/annotations/") or [])

    def annotate(self, task: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        """Create an annotation as the token's user (what a person's submit does)."""
        return dict(self.request("POST", f"/api/tasks/{task}/annotations/", {"result": result}))

    def update_annotation(self, annotation: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/api/annotations/{annotation}/", {"result": result}))

    def user(self, user: int) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/users/{user}/"))
