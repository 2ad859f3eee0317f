"""Bach chorales as binary piano rolls, in the form of JSB Chorales (Boulanger-Lewandowski et al. 2012),
read from the scores music21 ships in `music21/corpus/bach/` (MusicXML, a few Humdrum). Nothing downloads.

A piano roll is a (T, 88) uint8 array: row t is the frame at time t * frame_quarters (in quarter notes
from the piece's start), column k is MIDI pitch 21 + k (A0 .. C8); 1 where a note of any of the four
parts sounds at the frame's start time, i.e. onset <= t * frame_quarters < onset + duration (the
sampling of a piano roll at frame times; a note shorter than a frame between two frame times is lost).
JSB Chorales used quarter-note frames (frame_quarters = 1.0) and no transposition; both are kept here
(the pieces stay in their own keys). T = ceil(highest time / frame_quarters).

Which pieces: every score file directly in `corpus/bach` (the `choraleAnalyses` folder holds Roman
numeral analyses, not scores), sorted by file name. A score with more than four parts (instruments
doubling the chorale: horns, oboes, trumpets, timpani) keeps the four named Soprano, Alto, Tenor and
Bass. A piece is skipped, with its reason recorded, when it fails to parse, has neither four parts nor
those four voices, has a pitch outside the 88 keys, or has the same piano roll as a piece read before
it (music21 ships a few chorales twice, e.g. with and without its instrumental parts). Measured with
music21 10.5.1 at quarter-note frames: 413 score files, 405 pieces kept (median 48 frames, 24..272),
8 skipped (3 duplicates, 1 keyboard piece, 2 with two soprano parts, 2 whose voice parts are named
after the instruments doubling them); split 242/81/82. `python -m gatedrnn.data.chorales` prints them.

Parsing the ~400 scores takes about 45 s on one core (music21 10.5.1), so the rolls are cached per user:
    <cache>/data/chorales-v<FORMAT>-<key>.bin
<cache> is the engine's cache folder ($GATEDRNN_CACHE_DIR, else $XDG_CACHE_HOME/gatedrnn, else
~/.cache/gatedrnn); <key> is a sha256 of the cache format, the frame length, music21's version and the
name and bytes of every score read, so a changed corpus or option gives another file. The file is the
magic line, the sha256 of the payload, and the payload (an .npz); it is written to a temporary file and
renamed into place. A file whose magic, digest, key or array shapes do not check is rebuilt (with a
warning), never trusted; an unwritable cache folder only costs the parse next time.

Split (`split_chorales`): by piece, a seeded permutation, in JSB's proportions 229/76/77 of 382.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from gatedrnn.data._locate import CorruptDataError, DataUnavailableError

LOWEST_MIDI = 21  # A0: column 0
NUM_KEYS = 88  # A0 .. C8
NUM_PARTS = 4
VOICES = ("soprano", "alto", "tenor", "bass")
SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn")
CACHE_FORMAT = 2  # bump whenever piano_roll or parse_files would give other rolls: old caches then miss
MAGIC = b"gatedrnn chorales piano rolls\n"
JSB_SIZES = {"train": 229, "val": 76, "test": 77}  # Boulanger-Lewandowski et al. 2012, 382 chorales
EXTRA = "music"


@dataclass(frozen=True)
class Chorales:
    """The pieces kept, their piano rolls, and the pieces skipped with the reason."""

    names: tuple[str, ...]  # score file names, e.g. "bwv66.6.mxl"
    rolls: tuple[np.ndarray, ...]  # one (T_n, 88) uint8 array of 0/1 per piece
    skipped: tuple[tuple[str, str], ...]  # (file name, reason)
    frame_quarters: float
    cache_file: Optional[Path]  # where the rolls were read from or written to; None when not cached

    def __len__(self) -> int:
        return len(self.rolls)


class SkippedPiece(ValueError):
    """A score that is not a four-part chorale within the 88 keys; the message is the recorded reason."""


# ----- the corpus -----
def corpus_dir() -> Path:
    """music21's `corpus/bach` folder, located without importing music21; missing -> DataUnavailableError."""
    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            "the Bach chorales are read from the package 'music21', which is not installed: "
            f"pip install 'gatedrnn[{EXTRA}]' (or pip install music21)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "corpus" / "bach"
        if candidate.is_dir():
            return candidate
    raise DataUnavailableError(
        f"music21 is installed at {list(spec.submodule_search_locations)} but has no corpus/bach folder; "
        f"reinstall it: pip install --force-reinstall 'gatedrnn[{EXTRA}]'")


def chorale_files(directory: Optional[Union[str, Path]] = None, *, max_pieces: Optional[int] = None) -> list[Path]:
    """The score files directly in `directory` (default: music21's corpus/bach), sorted by name; the first
    `max_pieces` of them when given (before any is skipped)."""
    directory = corpus_dir() if directory is None else Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"chorale folder {str(directory)!r} does not exist")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in SCORE_SUFFIXES)
    if not files:
        raise CorruptDataError(f"{directory}: no score files ({', '.join(SCORE_SUFFIXES)}) found")
    return files if max_pieces is None else files[:max_pieces]


def _music21_version() -> str:
    try:
        return importlib.metadata.version("music21")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ----- one piece -----
def vocal_parts(score) -> list:
    """The score's four voices: its parts when it has exactly four, else the four parts named Soprano,
    Alto, Tenor and Bass (the chorale under instruments doubling or decorating it); else SkippedPiece."""
    parts = list(score.parts)
    if len(parts) == NUM_PARTS:
        return parts
    named = {}
    for part in parts:
        name = (part.partName or "").strip().lower()
        if name in VOICES:
            named.setdefault(name, []).append(part)
    if all(len(named.get(voice, [])) == 1 for voice in VOICES):
        return [named[voice][0] for voice in VOICES]
    names = [part.partName for part in parts]
    raise SkippedPiece(f"has {len(parts)} parts {names}, not four nor one each named Soprano, Alto, Tenor, Bass")


def piano_roll(score, frame_quarters: float = 1.0) -> np.ndarray:
    """A parsed music21 score -> the (T, 88) uint8 piano roll of its four voices (see the module docstring).

    A frame t holds pitch p when a note or chord of p in any voice has onset <= t * frame_quarters <
    onset + duration; grace notes (duration 0) hold no frame. No four voices (`vocal_parts`), or a pitch
    outside MIDI 21..108 -> SkippedPiece.
    """
    parts = vocal_parts(score)
    step = Fraction(frame_quarters)
    frames = math.ceil(Fraction(score.highestTime) / step)
    if frames < 1:
        raise SkippedPiece("has no duration")
    roll = np.zeros((frames, NUM_KEYS), dtype=np.uint8)  # (T, 88)
    for part in parts:
        flat = part.flatten()
        for element in flat.notes:  # notes and chords, ties as separate notes (their frames join up)
            onset = Fraction(flat.elementOffset(element))
            end = onset + Fraction(element.quarterLength)
            first, stop = math.ceil(onset / step), math.ceil(end / step)  # frames with onset <= t*step < end
            for pitch in element.pitches:
                key = pitch.midi - LOWEST_MIDI
                if not 0 <= key < NUM_KEYS:
                    raise SkippedPiece(f"pitch {pitch.nameWithOctave} (MIDI {pitch.midi}) is outside the 88 keys")
                roll[first:min(stop, frames), key] = 1
    return roll


def parse_chorale(path: Union[str, Path], frame_quarters: float = 1.0) -> np.ndarray:
    """Parse one score file with music21 -> (T, 88) piano roll; any parse failure -> SkippedPiece."""
    try:
        from music21 import converter
    except ImportError:
        raise DataUnavailableError(f"parsing the chorales needs music21: pip install 'gatedrnn[{EXTRA}]'") from None
    try:
        score = converter.parse(str(path), forceSource=True)  # our cache replaces music21's own pickles
    except Exception as error:  # music21 raises many kinds on a bad file; the piece is skipped, not fatal
        raise SkippedPiece(f"music21 could not parse it: {type(error).__name__}: {error}") from None
    return piano_roll(score, frame_quarters)


# ----- the cache -----
def default_cache_dir() -> Path:
    from gatedrnn.engine._build import cache_dir  # one definition of the user's cache folder

    return cache_dir() / "data"


def cache_key(files: Sequence[Path], frame_quarters: float) -> str:
    """sha256 (hex) of what the rolls depend on: the format, the frame, music21's version and every file."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT}; frame {float(frame_quarters)!r}; "
                            f"music21 {_music21_version()}\n".encode())
    for path in files:
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cache_path(key: str, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return root / f"chorales-v{CACHE_FORMAT}-{key[:20]}.bin"


def _encode(chorales: Chorales, key: str) -> bytes:
    lengths = np.array([len(r) for r in chorales.rolls], dtype=np.int64)  # (N,)
    frames = np.concatenate(chorales.rolls) if chorales.rolls else np.zeros((0, NUM_KEYS), np.uint8)  # (sum T, 88)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, key=np.array(key), frame_quarters=np.array(chorales.frame_quarters), lengths=lengths,
        frames=np.packbits(frames, axis=1), names=np.array(chorales.names, dtype=str),
        skipped_names=np.array([n for n, _ in chorales.skipped], dtype=str),
        skipped_reasons=np.array([r for _, r in chorales.skipped], dtype=str))
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _decode(blob: bytes, key: str, path: Path) -> Chorales:
    """The cache file's content -> Chorales; anything that does not check -> CorruptDataError."""
    if not blob.startswith(MAGIC):
        raise CorruptDataError(f"{path}: not a chorale cache file (bad magic line)")
    header_end = len(MAGIC) + 65
    digest, payload = blob[len(MAGIC):header_end - 1], blob[header_end:]
    if blob[header_end - 1:header_end] != b"\n" or hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptDataError(f"{path}: the payload's sha256 does not match its header (damaged file)")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:
        raise CorruptDataError(f"{path}: cannot read the arrays ({type(error).__name__}: {error})") from None
    expected = {"key", "frame_quarters", "lengths", "frames", "names", "skipped_names", "skipped_reasons"}
    if set(arrays) != expected:
        raise CorruptDataError(f"{path}: expected arrays {sorted(expected)}, got {sorted(arrays)}")
    if str(arrays["key"]) != key:
        raise CorruptDataError(f"{path}: made from other files or options (key {str(arrays['key'])[:20]})")
    lengths, packed, names = arrays["lengths"], arrays["frames"], arrays["names"]
    if (lengths.ndim != 1 or len(names) != len(lengths) or (len(lengths) and lengths.min() < 1)
            or packed.ndim != 2 or packed.shape != (int(lengths.sum()), math.ceil(NUM_KEYS / 8))
            or len(arrays["skipped_names"]) != len(arrays["skipped_reasons"])):
        raise CorruptDataError(f"{path}: inconsistent shapes (lengths {lengths.shape}, frames {packed.shape}, "
                               f"names {names.shape})")
    frames = np.unpackbits(packed, axis=1, count=NUM_KEYS)  # (sum T, 88) uint8 of 0/1
    rolls = tuple(np.split(frames, np.cumsum(lengths)[:-1])) if len(lengths) else ()
    return Chorales(names=tuple(str(n) for n in names), rolls=rolls,
                    skipped=tuple(zip(map(str, arrays["skipped_names"]), map(str, arrays["skipped_reasons"]))),
                    frame_quarters=float(arrays["frame_quarters"]), cache_file=path)


def _atomic_write(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)  # readers see the old file or the whole new one, never a part
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ----- the corpus as piano rolls -----
def parse_files(files: Sequence[Path], frame_quarters: float = 1.0) -> Chorales:
    """Parse every file (no cache): the kept pieces in file order, duplicates and failures skipped."""
    names, rolls, skipped, seen = [], [], [], {}
    for path in files:
        try:
            roll = parse_chorale(path, frame_quarters)
        except SkippedPiece as reason:
            skipped.append((path.name, str(reason)))
            continue
        fingerprint = hashlib.sha256(roll.tobytes() + str(roll.shape).encode()).hexdigest()
        if fingerprint in seen:
            skipped.append((path.name, f"same piano roll as {seen[fingerprint]}"))
            continue
        seen[fingerprint] = path.name
        names.append(path.name)
        rolls.append(roll)
    return Chorales(tuple(names), tuple(rolls), tuple(skipped), float(frame_quarters), None)


def load_chorales(*, max_pieces: Optional[int] = None, frame_quarters: float = 1.0,
                  directory: Optional[Union[str, Path]] = None, cache: bool = True,
                  cache_dir: Optional[Union[str, Path]] = None) -> Chorales:
    """The chorales as piano rolls, from the cache when it holds them, else parsed (and cached).

    max_pieces: read only the first score files (quick tests). frame_quarters: frame length in quarter
    notes (1.0 as JSB; 0.5 for eighth notes). directory: another folder of scores. cache: False parses
    every time. cache_dir: another cache folder (default `<cache>/data`).
    """
    if not (isinstance(frame_quarters, (int, float)) and not isinstance(frame_quarters, bool)
            and 0 < frame_quarters <= 4):
        raise ValueError(f"frame_quarters should be a number in (0, 4], got {frame_quarters!r}")
    if max_pieces is not None and (isinstance(max_pieces, bool) or not isinstance(max_pieces, int) or max_pieces < 1):
        raise ValueError(f"max_pieces should be an int >= 1 or None, got {max_pieces!r}")
    files = chorale_files(directory, max_pieces=max_pieces)
    if not cache:
        return parse_files(files, frame_quarters)
    key = cache_key(files, frame_quarters)
    path = cache_path(key, cache_dir)
    if path.is_file():
        try:
            return _decode(path.read_bytes(), key, path)
        except (CorruptDataError, OSError) as error:
            warnings.warn(f"rebuilding the chorale cache: {error}", RuntimeWarning, stacklevel=2)
    chorales = parse_files(files, frame_quarters)
    try:
        _atomic_write(path, _encode(chorales, key))
    except OSError as error:  # a read-only or full disk: the rolls are still right, only not kept
        warnings.warn(f"cannot write the chorale cache {str(path)!r} ({error.strerror or error}); "
                      f"the scores will be parsed again next time", RuntimeWarning, stacklevel=2)
        return chorales
    return Chorales(chorales.names, chorales.rolls, chorales.skipped, chorales.frame_quarters, path)


def split_chorales(count: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: sorted piece indices, disjoint, covering 0..count-1. A permutation seeded
    by `seed`; val and test take round(count * 76/382) and round(count * 77/382) pieces (JSB's
    proportions; 405 pieces -> 242/81/82), train the rest."""
    total = sum(JSB_SIZES.values())
    n_val, n_test = round(count * JSB_SIZES["val"] / total), round(count * JSB_SIZES["test"] / total)
    if count - n_val - n_test < 1 or n_val < 1 or n_test < 1:
        raise ValueError(f"cannot split {count} pieces into non-empty train/val/test; use at least 3 pieces "
                         f"(a larger max_pieces)")
    order = np.random.default_rng(seed).permutation(count)
    return {"train": np.sort(order[n_val + n_test:]), "val": np.sort(order[:n_val]),
            "test": np.sort(order[n_val:n_val + n_test])}


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m gatedrnn.data.chorales [--eighth]`: build (or read) the cache and print what it holds."""
    argv = sys.argv[1:] if argv is None else argv
    frame = 0.5 if "--eighth" in argv else 1.0
    started = time.perf_counter()
    chorales = load_chorales(frame_quarters=frame)
    seconds = time.perf_counter() - started
    lengths = [len(r) for r in chorales.rolls]
    sizes = {name: len(rows) for name, rows in split_chorales(len(chorales)).items()}
    print(f"{len(chorales)} pieces kept, {len(chorales.skipped)} skipped, in {seconds:.1f} s; cache "
          f"{chorales.cache_file}")
    print(f"frames per piece: min {min(lengths)}, median {int(np.median(lengths))}, max {max(lengths)}, "
          f"total {sum(lengths)}; split {sizes}")
    for name, reason in chorales.skipped:
        print(f"  skipped {name}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
