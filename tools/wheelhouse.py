"""Fill the wheelhouse cp-apiserver serves at /dist/ (``make wheelhouse``), rebuilding only what changed.

    python tools/wheelhouse.py [DIR] [--image IMAGE ...]

- wheels: ``pip wheel . -w DIR``: controlplane's own wheel and its runtime dependencies (no test
  extras). Skipped when DIR/.recipe holds the hash of pyproject.toml and every file of the package
  (controlplane/, agent/, and the deploy files the package carries), so an unchanged tree costs a
  hash; a changed one is built in a temporary folder and swapped in, old wheels removed.
- ``--image IMAGE``: ``docker save IMAGE`` as DIR/<image with / and : as ->.tar (the proxy image a
  node without a registry loads from /dist/); skipped when the image's id is unchanged.
Exit status: 0 done (or nothing to do), 1 a build failed (its output on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / "build" / "wheelhouse"
PACKAGE_DIRS = ("controlplane", "agent")
RECIPE = ".recipe"


def recipe_hash(repo: Path = REPO) -> str:
    """sha256 over pyproject.toml and the package's files (paths and contents; links followed)."""
    digest = hashlib.sha256()
    files = [repo / "pyproject.toml"]
    for top in PACKAGE_DIRS:
        files += [p for p in (repo / top).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    for path in sorted(files):
        digest.update(str(path.relative_to(repo)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_wheels(folder: Path, *, python: str = sys.executable) -> bool:
    """Build the wheels when the recipe changed; True when it built."""
    wanted = recipe_hash()
    stamp = folder / RECIPE
    if stamp.exists() and stamp.read_text().strip() == wanted and any(folder.glob("controlplane-*.whl")):
        print(f"wheelhouse: {folder} is current", file=sys.stderr)
        return False
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cp-wheelhouse-", dir=folder.parent) as tmp:
        cmd = [python, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", str(REPO), "-w", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"wheelhouse: pip wheel failed (exit {done.returncode})")
        built = {p.name for p in Path(tmp).glob("*.whl")}
        for old in folder.glob("*.whl"):
            if old.name not in built:
                old.unlink()
        for name in sorted(built):
            shutil.move(str(Path(tmp) / name), str(folder / name))
    stamp.write_text(wanted + "\n")
    print(f"wheelhouse: {len(built)} wheels in {folder}", file=sys.stderr)
    return True


def image_file(image: str) -> str:
    return image.replace("/", "-").replace(":", "-") + ".tar"


def save_image(folder: Path, image: str) -> bool:
    """``docker save`` the image into the folder unless its id is unchanged; True when it saved."""
    got = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True)
    if got.returncode != 0:
        raise SystemExit(f"wheelhouse: image {image} not found (build it first: deploy/images/build-local)")
    image_id = got.stdout.strip()
    target = folder / image_file(image)
    stamp = folder / f".{target.name}.id"
    if target.exists() and stamp.exists() and stamp.read_text().strip() == image_id:
        print(f"wheelhouse: {target.name} is current", file=sys.stderr)
        return False
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{target.name}.partial"
    subprocess.run(["docker", "save", "-o", str(partial), image], check=True)
    partial.replace(target)
    stamp.write_text(image_id + "\n")
    print(f"wheelhouse: saved {image} as {target.name}", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_DIR))
    parser.add_argument("--image", action="append", default=[], help="also docker-save this image")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    build_wheels(folder)
    for image in args.image:
        save_image(folder, image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
