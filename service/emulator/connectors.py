"""The providers the emulator plays: each a connector with its credential form (or
OAuth, which needs the real StackOne), the Hub's integration and StackOne's default
connector profile of it (one id for both, as StackOne's `integration_id` became
`connector_profile_id`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pydantic import JsonValue

from service.emulator.state import Json

_INTEGRATION_IDS = uuid.UUID("6f1d2c3e-5b7a-4c1e-9d2f-0a8b7c6d5e4f")


def logo_url(base: str, key: str) -> str:
    """Where the emulator serves `key`'s logo."""
    return f"{base}/emulator/logos/{key}.svg"


@dataclass(frozen=True)
class FormField:
    """One field of a connector's credential form, as the Hub renders it."""

    key: str
    label: str
    secret: bool = False
    placeholder: str = ""
    description: str = ""

    def as_json(self) -> Json:
        """The field in the Hub's `ConnectorConfigField` shape."""
        return {
            "key": self.key,
            "label": self.label,
            "type": "password" if self.secret else "text",
            "required": True,
            "readOnly": False,
            "secret": self.secret,
            "placeholder": self.placeholder,
            "description": self.description,
        }


@dataclass(frozen=True)
class Connector:
    """An emulated provider: a credential form, or OAuth (which needs the real StackOne)."""

    key: str
    name: str
    category: str
    color: str
    fields: tuple[FormField, ...] = ()

    @property
    def integration_id(self) -> str:
        """A stable UUID, as StackOne's integration ids are."""
        return str(uuid.uuid5(_INTEGRATION_IDS, self.key))

    @property
    def oauth(self) -> bool:
        """True when the provider signs in with OAuth rather than a form."""
        return not self.fields

    def integration(self, base: str) -> Json:
        """The connector in the Hub's `Integration` shape (an entry of the list)."""
        return {
            "active": True,
            "name": self.name,
            "provider": self.key,
            "type": self.category,
            "version": "1.0.0",
            "authentication_config_key": "oauth2" if self.oauth else "api_key",
            "environment": "production",
            "integration_id": self.integration_id,
            "logo_url": logo_url(base, self.key),
        }

    def config(self, base: str) -> Json:
        """The connector's form in the Hub's `FalconConnectorConfig` shape."""
        notices: list[JsonValue] = []
        if self.oauth:
            notices.append(
                {
                    "key": "emulator-oauth",
                    "type": "warning",
                    "description": f"{self.name} signs in with OAuth on its own site, which "
                    "the StackOne emulator cannot reach. Set STACKONE_CONNECT_API_KEY to link "
                    "it through the real StackOne.",
                }
            )
        return {
            "key": self.key,
            "name": self.name,
            "type": "oauth2" if self.oauth else "custom",
            **({"grantType": "authorization_code"} if self.oauth else {}),
            "configFields": [form_field.as_json() for form_field in self.fields],
            "configNotices": notices,
            "assets": {"icon": logo_url(base, self.key)},
            "support": {"link": None, "description": None},
        }


def _api_key_field(description: str) -> FormField:
    return FormField("api_key", "API Key", secret=True, description=description)


CONNECTORS: tuple[Connector, ...] = (
    Connector(
        "bamboohr",
        "BambooHR",
        "hris",
        "#73c41d",
        (
            FormField(
                "subdomain",
                "Subdomain",
                placeholder="acme",
                description="The part before .bamboohr.com in your BambooHR address.",
            ),
            _api_key_field("In BambooHR: your name → API Keys → Add New Key."),
        ),
    ),
    Connector(
        "hibob",
        "HiBob",
        "hris",
        "#e8336d",
        (
            FormField("service_user_id", "Service User ID"),
            FormField("service_user_token", "Service User Token", secret=True),
        ),
    ),
    Connector(
        "personio",
        "Personio",
        "hris",
        "#1f2a44",
        (
            FormField("client_id", "Client ID"),
            FormField("client_secret", "Client Secret", secret=True),
        ),
    ),
    Connector(
        "greenhouse",
        "Greenhouse",
        "ats",
        "#24a47f",
        (_api_key_field("A Harvest API key with access to candidates and jobs."),),
    ),
    Connector("lever", "Lever", "ats", "#2f3a4a"),
    Connector("hubspot", "HubSpot", "crm", "#ff7a59"),
)
BY_KEY = {connector.key: connector for connector in CONNECTORS}


def generic_connector(key: str, category: str) -> Connector:
    """A provider the catalogue lacks, named by a session: a plain API-key form."""
    name = key.replace("_", " ").title()
    return Connector(key, name, category, "#5b6b7f", (_api_key_field(f"Your {name} API key."),))


CONNECTOR_VERSIONS = ("1.0.0", "2.0.0")
"""The versions of every emulated connector, oldest first: the newest is used unless one
is pinned."""
PROFILES_SINCE = "2026-01-05T09:00:00.000Z"  # profiles predate any run of the emulator


@dataclass(frozen=True)
class ConnectorProfile:
    """A connector profile of the emulated project: a connector and how it authenticates."""

    connector: Connector
    name: str
    default: bool = True
    active: bool = True
    release_stage: str = "ga"

    @property
    def id(self) -> str:
        """The default profile's id is its connector's integration id, as at StackOne."""
        if self.default:
            return self.connector.integration_id
        return str(uuid.uuid5(_INTEGRATION_IDS, f"{self.connector.key}/{self.name}"))

    def to_json(self, base: str, pinned: str | None) -> Json:
        """The profile as `GET /connector_profiles` lists it, with its pinned version."""
        oauth = self.connector.oauth
        return {
            "id": self.id,
            "name": self.name,
            "connector_key": self.connector.key,
            "connector_label": self.connector.name,
            "categories": [self.connector.category],
            "active": self.active,
            "default": self.default,
            "release_stage": self.release_stage,
            "logo_url": logo_url(base, self.connector.key),
            "created_at": PROFILES_SINCE,
            "updated_at": PROFILES_SINCE,
            "authentication_config_key": "oauth2" if oauth else "api_key",
            "authentication_config_label": "OAuth 2.0" if oauth else "API key",
            "connector_owner": "stackone",
            "connector_pinned_version": pinned,
            "connector_version": pinned or CONNECTOR_VERSIONS[-1],
            "environment": "production",
        }


PROFILES: tuple[ConnectorProfile, ...] = (
    *(ConnectorProfile(connector, f"{connector.name} (default)") for connector in CONNECTORS),
    # A second, disabled profile: a connector's next major version in beta.
    ConnectorProfile(BY_KEY["hibob"], "HiBob v2 (beta)", False, False, "beta"),
)
PROFILES_BY_ID = {profile.id: profile for profile in PROFILES}


def categories_of(provider: str) -> list[str] | None:
    """The categories StackOne lists for an account of `provider`; None for one the
    catalogue lacks."""
    connector = BY_KEY.get(provider)
    return None if connector is None else [connector.category]
