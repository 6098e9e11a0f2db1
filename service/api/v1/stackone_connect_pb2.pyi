import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AccountStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_STATUS_UNSPECIFIED: _ClassVar[AccountStatus]
    ACCOUNT_STATUS_ACTIVE: _ClassVar[AccountStatus]
    ACCOUNT_STATUS_INACTIVE: _ClassVar[AccountStatus]
    ACCOUNT_STATUS_ERROR: _ClassVar[AccountStatus]
    ACCOUNT_STATUS_OTHER: _ClassVar[AccountStatus]

class EventSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_SOURCE_UNSPECIFIED: _ClassVar[EventSource]
    EVENT_SOURCE_WEBHOOK: _ClassVar[EventSource]
    EVENT_SOURCE_RECONCILIATION: _ClassVar[EventSource]

class Verification(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFICATION_UNSPECIFIED: _ClassVar[Verification]
    VERIFICATION_VERIFIED: _ClassVar[Verification]
    VERIFICATION_UNVERIFIED: _ClassVar[Verification]
    VERIFICATION_NOT_APPLICABLE: _ClassVar[Verification]
ACCOUNT_STATUS_UNSPECIFIED: AccountStatus
ACCOUNT_STATUS_ACTIVE: AccountStatus
ACCOUNT_STATUS_INACTIVE: AccountStatus
ACCOUNT_STATUS_ERROR: AccountStatus
ACCOUNT_STATUS_OTHER: AccountStatus
EVENT_SOURCE_UNSPECIFIED: EventSource
EVENT_SOURCE_WEBHOOK: EventSource
EVENT_SOURCE_RECONCILIATION: EventSource
VERIFICATION_UNSPECIFIED: Verification
VERIFICATION_VERIFIED: Verification
VERIFICATION_UNVERIFIED: Verification
VERIFICATION_NOT_APPLICABLE: Verification

class CreateSessionRequest(_message.Message):
    __slots__ = ("origin_owner_id", "origin_owner_name", "origin_username", "provider", "categories", "expires_in", "account_id", "label", "metadata", "multiple")
    ORIGIN_OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_USERNAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    MULTIPLE_FIELD_NUMBER: _ClassVar[int]
    origin_owner_id: str
    origin_owner_name: str
    origin_username: str
    provider: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    expires_in: int
    account_id: str
    label: str
    metadata: _struct_pb2.Struct
    multiple: bool
    def __init__(self, origin_owner_id: _Optional[str] = ..., origin_owner_name: _Optional[str] = ..., origin_username: _Optional[str] = ..., provider: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., expires_in: _Optional[int] = ..., account_id: _Optional[str] = ..., label: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., multiple: _Optional[bool] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("id", "token", "auth_link_url", "expires_at", "provider", "categories", "origin_owner_id", "origin_owner_name", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    AUTH_LINK_URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    token: str
    auth_link_url: str
    expires_at: _timestamp_pb2.Timestamp
    provider: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    origin_owner_id: str
    origin_owner_name: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., token: _Optional[str] = ..., auth_link_url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., provider: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., origin_owner_id: _Optional[str] = ..., origin_owner_name: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StatusReason(_message.Message):
    __slots__ = ("code", "description", "timestamp")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    code: str
    description: str
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, code: _Optional[str] = ..., description: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("id", "provider", "provider_name", "origin_owner_id", "origin_owner_name", "origin_username", "status", "raw_status", "status_reasons", "label", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_NAME_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_USERNAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RAW_STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASONS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    provider: str
    provider_name: str
    origin_owner_id: str
    origin_owner_name: str
    origin_username: str
    status: AccountStatus
    raw_status: str
    status_reasons: _containers.RepeatedCompositeFieldContainer[StatusReason]
    label: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., provider: _Optional[str] = ..., provider_name: _Optional[str] = ..., origin_owner_id: _Optional[str] = ..., origin_owner_name: _Optional[str] = ..., origin_username: _Optional[str] = ..., status: _Optional[_Union[AccountStatus, str]] = ..., raw_status: _Optional[str] = ..., status_reasons: _Optional[_Iterable[_Union[StatusReason, _Mapping]]] = ..., label: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class ListAccountsRequest(_message.Message):
    __slots__ = ("origin_owner_ids", "providers", "account_ids", "statuses", "page_size", "page_token")
    ORIGIN_OWNER_IDS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_IDS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    origin_owner_ids: _containers.RepeatedScalarFieldContainer[str]
    providers: _containers.RepeatedScalarFieldContainer[str]
    account_ids: _containers.RepeatedScalarFieldContainer[str]
    statuses: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, origin_owner_ids: _Optional[_Iterable[str]] = ..., providers: _Optional[_Iterable[str]] = ..., account_ids: _Optional[_Iterable[str]] = ..., statuses: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAccountsResponse(_message.Message):
    __slots__ = ("accounts", "next_page_token")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    next_page_token: str
    def __init__(self, accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteAccountRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class StreamAccountEventsRequest(_message.Message):
    __slots__ = ("providers", "origin_owner_ids", "account_ids", "event_types", "from_now", "after_cursor", "from_earliest")
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OWNER_IDS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_IDS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    FROM_NOW_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    FROM_EARLIEST_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedScalarFieldContainer[str]
    origin_owner_ids: _containers.RepeatedScalarFieldContainer[str]
    account_ids: _containers.RepeatedScalarFieldContainer[str]
    event_types: _containers.RepeatedScalarFieldContainer[str]
    from_now: _empty_pb2.Empty
    after_cursor: str
    from_earliest: _empty_pb2.Empty
    def __init__(self, providers: _Optional[_Iterable[str]] = ..., origin_owner_ids: _Optional[_Iterable[str]] = ..., account_ids: _Optional[_Iterable[str]] = ..., event_types: _Optional[_Iterable[str]] = ..., from_now: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ..., after_cursor: _Optional[str] = ..., from_earliest: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ...) -> None: ...

class AccountEvent(_message.Message):
    __slots__ = ("event_id", "cursor", "type", "account", "occurred_at", "received_at", "source", "verification", "verification_error")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_ERROR_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    cursor: str
    type: str
    account: Account
    occurred_at: _timestamp_pb2.Timestamp
    received_at: _timestamp_pb2.Timestamp
    source: EventSource
    verification: Verification
    verification_error: str
    def __init__(self, event_id: _Optional[str] = ..., cursor: _Optional[str] = ..., type: _Optional[str] = ..., account: _Optional[_Union[Account, _Mapping]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[EventSource, str]] = ..., verification: _Optional[_Union[Verification, str]] = ..., verification_error: _Optional[str] = ...) -> None: ...

class Bookmark(_message.Message):
    __slots__ = ("cursor", "sent_at")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, cursor: _Optional[str] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamAccountEventsResponse(_message.Message):
    __slots__ = ("event", "bookmark")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    BOOKMARK_FIELD_NUMBER: _ClassVar[int]
    event: AccountEvent
    bookmark: Bookmark
    def __init__(self, event: _Optional[_Union[AccountEvent, _Mapping]] = ..., bookmark: _Optional[_Union[Bookmark, _Mapping]] = ...) -> None: ...
