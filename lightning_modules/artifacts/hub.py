"""Opt-in upload of a model folder or ONNX folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from datamodules import InputError


def push_folder(folder: Path, repo_id: str) -> None:
    """Upload a model folder (weights or ONNX, tokenizer, card) to the Hugging Face Hub."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        url = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, commit_message="shrink: upload model"
        )
    except Exception as e:  # noqa: BLE001 - offline, no token, no rights: one line, nothing else written
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InputError(
            f"push to the Hub ({repo_id}) failed: {reason}; the folder {folder} is intact: "
            "check the network and `huggingface-cli login`, then rerun with --push_to_hub or use push"
        ) from None
    print(f"pushed {folder} to {url}")
