from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.job_status import JobStatus
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.generate_params import GenerateParams
    from ..models.job_links import JobLinks
    from ..models.job_webhook import JobWebhook
    from ..models.progress import Progress
    from ..models.timings import Timings


T = TypeVar("T", bound="JobResponse")


@_attrs_define
class JobResponse:
    """A job: its state, the parameters it runs with, its timings and its links.

    Attributes:
        created_at (float): Unix time the job was accepted.
        id (str):
        links (JobLinks):
        model (str): The model that runs (or ran) the job.
        params (GenerateParams): The fully resolved parameters a worker runs: every default filled in, seed included.
        status (JobStatus):
        timings (Timings): Seconds spent in each phase of a job; null until the phase has happened.
        attempts (int | Unset): Times a worker started this job. Default: 0.
        cancel_requested (bool | Unset):  Default: False.
        error (None | str | Unset): Why the job failed or was canceled.
        finished_at (float | None | Unset):
        progress (None | Progress | Unset): Denoising progress.
        queue_position (int | None | Unset): Jobs ahead of this one in its model's queue (0 = next), while queued; as of
            the API's latest look at that queue, at most 0.5 s old. A job queued since that look counts behind every job
            queued then; one a worker has taken but not yet started is 0.
        webhook (JobWebhook | None | Unset): The request's webhook and its latest delivery; null without.
    """

    created_at: float
    id: str
    links: JobLinks
    model: str
    params: GenerateParams
    status: JobStatus
    timings: Timings
    attempts: int | Unset = 0
    cancel_requested: bool | Unset = False
    error: None | str | Unset = UNSET
    finished_at: float | None | Unset = UNSET
    progress: None | Progress | Unset = UNSET
    queue_position: int | None | Unset = UNSET
    webhook: JobWebhook | None | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ..models.job_webhook import JobWebhook
        from ..models.progress import Progress

        created_at = self.created_at

        id = self.id

        links = self.links.to_dict()

        model = self.model

        params = self.params.to_dict()

        status = self.status.value

        timings = self.timings.to_dict()

        attempts = self.attempts

        cancel_requested = self.cancel_requested

        error: None | str | Unset
        if isinstance(self.error, Unset):
            error = UNSET
        else:
            error = self.error

        finished_at: float | None | Unset
        if isinstance(self.finished_at, Unset):
            finished_at = UNSET
        else:
            finished_at = self.finished_at

        progress: dict[str, Any] | None | Unset
        if isinstance(self.progress, Unset):
            progress = UNSET
        elif isinstance(self.progress, Progress):
            progress = self.progress.to_dict()
        else:
            progress = self.progress

        queue_position: int | None | Unset
        if isinstance(self.queue_position, Unset):
            queue_position = UNSET
        else:
            queue_position = self.queue_position

        webhook: dict[str, Any] | None | Unset
        if isinstance(self.webhook, Unset):
            webhook = UNSET
        elif isinstance(self.webhook, JobWebhook):
            webhook = self.webhook.to_dict()
        else:
            webhook = self.webhook

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "created_at": created_at,
                "id": id,
                "links": links,
                "model": model,
                "params": params,
                "status": status,
                "timings": timings,
            }
        )
        if attempts is not UNSET:
            field_dict["attempts"] = attempts
        if cancel_requested is not UNSET:
            field_dict["cancel_requested"] = cancel_requested
        if error is not UNSET:
            field_dict["error"] = error
        if finished_at is not UNSET:
            field_dict["finished_at"] = finished_at
        if progress is not UNSET:
            field_dict["progress"] = progress
        if queue_position is not UNSET:
            field_dict["queue_position"] = queue_position
        if webhook is not UNSET:
            field_dict["webhook"] = webhook

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.generate_params import GenerateParams
        from ..models.job_links import JobLinks
        from ..models.job_webhook import JobWebhook
        from ..models.progress import Progress
        from ..models.timings import Timings

        d = dict(src_dict)
        created_at = d.pop("created_at")

        id = d.pop("id")

        links = JobLinks.from_dict(d.pop("links"))

        model = d.pop("model")

        params = GenerateParams.from_dict(d.pop("params"))

        status = JobStatus(d.pop("status"))

        timings = Timings.from_dict(d.pop("timings"))

        attempts = d.pop("attempts", UNSET)

        cancel_requested = d.pop("cancel_requested", UNSET)

        def _parse_error(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        error = _parse_error(d.pop("error", UNSET))

        def _parse_finished_at(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        finished_at = _parse_finished_at(d.pop("finished_at", UNSET))

        def _parse_progress(data: object) -> None | Progress | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                progress_type_0 = Progress.from_dict(data)

                return progress_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | Progress | Unset, data)

        progress = _parse_progress(d.pop("progress", UNSET))

        def _parse_queue_position(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        queue_position = _parse_queue_position(d.pop("queue_position", UNSET))

        def _parse_webhook(data: object) -> JobWebhook | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                webhook_type_0 = JobWebhook.from_dict(data)

                return webhook_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(JobWebhook | None | Unset, data)

        webhook = _parse_webhook(d.pop("webhook", UNSET))

        job_response = cls(
            created_at=created_at,
            id=id,
            links=links,
            model=model,
            params=params,
            status=status,
            timings=timings,
            attempts=attempts,
            cancel_requested=cancel_requested,
            error=error,
            finished_at=finished_at,
            progress=progress,
            queue_position=queue_position,
            webhook=webhook,
        )

        job_response.additional_properties = d
        return job_response

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
