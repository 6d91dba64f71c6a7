from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.job_status import JobStatus
from ..models.webhook_state import WebhookState
from ..types import UNSET, Unset

T = TypeVar("T", bound="JobWebhook")


@_attrs_define
class JobWebhook:
    """A job's webhook and the delivery of its latest event.

    Attributes:
        events (list[JobStatus]):
        url (str):
        attempts (int | Unset): POSTs of that event so far. Default: 0.
        event (JobStatus | None | Unset): The latest of `events` the job reached; null until one.
        last_status (int | None | Unset): HTTP status of the latest POST; null when it got no answer.
        state (None | Unset | WebhookState): That event's delivery; null until the job reaches an event.
    """

    events: list[JobStatus]
    url: str
    attempts: int | Unset = 0
    event: JobStatus | None | Unset = UNSET
    last_status: int | None | Unset = UNSET
    state: None | Unset | WebhookState = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        events = []
        for events_item_data in self.events:
            events_item = events_item_data.value
            events.append(events_item)

        url = self.url

        attempts = self.attempts

        event: None | str | Unset
        if isinstance(self.event, Unset):
            event = UNSET
        elif isinstance(self.event, JobStatus):
            event = self.event.value
        else:
            event = self.event

        last_status: int | None | Unset
        if isinstance(self.last_status, Unset):
            last_status = UNSET
        else:
            last_status = self.last_status

        state: None | str | Unset
        if isinstance(self.state, Unset):
            state = UNSET
        elif isinstance(self.state, WebhookState):
            state = self.state.value
        else:
            state = self.state

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "events": events,
                "url": url,
            }
        )
        if attempts is not UNSET:
            field_dict["attempts"] = attempts
        if event is not UNSET:
            field_dict["event"] = event
        if last_status is not UNSET:
            field_dict["last_status"] = last_status
        if state is not UNSET:
            field_dict["state"] = state

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        events = []
        _events = d.pop("events")
        for events_item_data in _events:
            events_item = JobStatus(events_item_data)

            events.append(events_item)

        url = d.pop("url")

        attempts = d.pop("attempts", UNSET)

        def _parse_event(data: object) -> JobStatus | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                event_type_0 = JobStatus(data)

                return event_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(JobStatus | None | Unset, data)

        event = _parse_event(d.pop("event", UNSET))

        def _parse_last_status(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        last_status = _parse_last_status(d.pop("last_status", UNSET))

        def _parse_state(data: object) -> None | Unset | WebhookState:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                state_type_0 = WebhookState(data)

                return state_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | Unset | WebhookState, data)

        state = _parse_state(d.pop("state", UNSET))

        job_webhook = cls(
            events=events,
            url=url,
            attempts=attempts,
            event=event,
            last_status=last_status,
            state=state,
        )

        job_webhook.additional_properties = d
        return job_webhook

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
