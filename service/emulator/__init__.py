"""A local emulator of the StackOne endpoints this service uses (see `app`)."""

from service.emulator.app import (
    EMULATOR_STATE,
    EmulatorConfig,
    EmulatorState,
    Fault,
    build_emulator_app,
    sign_webhook,
)

__all__ = [
    "EMULATOR_STATE",
    "EmulatorConfig",
    "EmulatorState",
    "Fault",
    "build_emulator_app",
    "sign_webhook",
]
