"""Pushing the repository to a Hugging Face Space. The Hub refuses plain files over 10 MB in a git push;
`upload_folder` stores every large file (the shipped checkpoints, 7-25 MB) through the Hub's LFS itself, so
no git-lfs set-up is needed. Online path: it needs a token (HF_TOKEN or `huggingface-cli login`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from models.registry import REPO_ROOT

HUB_FILE_LIMIT = 10 * 2**20  # bigger files go through LFS


def space_files(root: Path = REPO_ROOT) -> list[str]:
    """What the Space gets: the files git tracks (so corpora, runs and caches, all ignored, stay behind)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True).stdout
    return sorted(name for name in listed.split("\0") if name and (root / name).is_file())


def push(space: str, root: Path = REPO_ROOT, private: bool = False) -> dict:
    """Create (if needed) the Gradio Space `owner/name` and upload the tracked files to it."""
    from huggingface_hub import HfApi

    if space.count("/") != 1 or not all(space.split("/")):
        raise ValueError(f"a Space is named owner/name, not {space!r}")
    files = space_files(root)
    odd = [name for name in files if any(c in name for c in "*?[]")]
    if odd:  # upload patterns are globs
        raise ValueError(f"tracked file names with glob characters cannot be uploaded as they are: {odd[:3]}")
    api = HfApi()
    try:
        api.create_repo(space, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        # The working copy's tracked files; files the repository no longer has are deleted from the Space.
        commit = api.upload_folder(folder_path=str(root), repo_id=space, repo_type="space", allow_patterns=files,
                                   delete_patterns=["*"], commit_message="Speech Studio from its repository")
    except Exception as error:  # the Hub, the network or the token: one line
        raise ValueError(f"pushing to the Space {space} failed: {error}") from None
    large = [name for name in files if (root / name).stat().st_size > HUB_FILE_LIMIT]
    return {"space": space, "files": len(files), "through_lfs": large, "commit": str(commit)}
