"""What the Temporal web UI and ``katkit list`` show of a run without asking a worker: its search attributes
(KatkitTenant, KatkitRepo, KatkitSha, KatkitPhase, KatkitStatus), its memo (a one-line summary and the gate's
decisions) and its current details (the run's page: ``workflows/details.py``)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from katkit.models import RunStatus
    from katkit.names import SA_PHASE, SA_REPO, SA_SHA, SA_STATUS, SA_TENANT
    from katkit.states import State
    from workflows.details import run_details


class RunVisibility:
    """Keeps a run's search attributes and memo in step with its ``RunStatus`` (upserting only what changed)."""

    def __init__(self, status: RunStatus, *, memo: bool) -> None:
        self.status = status
        self.memo_enabled = memo  # runs recorded before the memo replay without it
        self._sent: dict[str, str] = {}
        self._details = ""

    def set(self, *, status: State | None = None, phase: str | None = None) -> None:
        """Change the run's status/phase and keep KatkitStatus/KatkitPhase (one upsert, only what changed)."""
        st = self.status
        st.status = status or st.status
        st.phase = phase or st.phase
        updates = []
        for key, value in ((SA_STATUS, str(st.status)), (SA_PHASE, st.phase)):
            if value and self._sent.get(key.name) != value:
                self._sent[key.name] = value
                updates.append(key.value_set(value))
        if not self._sent.get(SA_TENANT.name):  # started without them (e.g. by `temporal workflow start`)
            for key, value in ((SA_TENANT, st.tenant), (SA_REPO, st.repo), (SA_SHA, st.sha)):
                self._sent[key.name] = value
                if workflow.info().typed_search_attributes.get(key) != value:
                    updates.append(key.value_set(value))
        if updates:
            workflow.upsert_search_attributes(updates)
            self.memo()
        self.refresh()

    def refresh(self) -> None:
        """Show the run's status on its page (current details: no history event, nothing to replay)."""
        info = workflow.info()
        details = run_details(self.status, info.namespace, info.parent.workflow_id if info.parent else None)
        if details != self._details:
            self._details = details
            workflow.set_current_details(details)

    def memo(self) -> None:
        self.refresh()
        if not self.memo_enabled:
            return
        st = self.status
        decisions = [f"{d.kind} by {d.by}{'' if d.accepted else ' (refused)'}" for d in st.approval.decisions]
        summary = f"{st.status}: {st.phase or '-'} | {st.repo}@{st.sha[:12]} -> {st.tenant} by {st.started_by}"
        if st.deployed:
            summary += f" | deployed {st.deployed.image}"
        if st.error:
            summary += f" | {st.error}"
        workflow.upsert_memo({"summary": summary, "decisions": decisions})
