"""A local emulator of the StackOne endpoints this service uses (see `app`)."""

from service.emulator.app import build_emulator_app
from service.emulator.delivery import sign_webhook
from service.emulator.state import EMULATOR_STATE, EmulatorConfig, EmulatorState, Fault

__all__ = [
    "EMULATOR_STATE",
    "EmulatorConfig",
    "EmulatorState",
    "Fault",
    "build_emulator_app",
    "sign_webhook",
]
