"""One W&B run per command: offline unless a key or login exists (never a prompt), finished before the last line."""

from __future__ import annotations

import netrc
import os
import sys


def wandb_mode_default() -> None:
    """Offline W&B unless an API key is set or the machine is logged in: never a prompt or a hang."""
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    if not logged_in:
        os.environ["WANDB_MODE"] = "offline"


def finish_wandb() -> None:
    """One W&B run per command, also when commands run in one process (demo, tests); before the
    command's last line, which stays last."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
