"""Hub datasets on a machine that may not reach the hub."""

from __future__ import annotations


def hub_or_cache(name: str) -> None:
    """Ask the hub once, quickly, whether it answers for dataset ``name``; when it does not, put
    ``datasets`` in offline mode (a cached copy still loads, anything else fails at once), as it
    would otherwise retry for about 20 s before failing."""
    import datasets
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        return
    try:
        HfApi().dataset_info(name, timeout=5)
    except HfHubHTTPError:  # it answered (e.g. no such dataset): load_dataset says what is wrong
        return
    except Exception:  # noqa: BLE001 - no answer: connection, DNS, proxy or timeout errors alike
        datasets.config.HF_HUB_OFFLINE = True
