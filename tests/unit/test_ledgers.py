"""check_ledgers, the exactly-once proof, shown catching what it claims to catch."""

from __future__ import annotations

from pathlib import Path

from deploy.check.loadcheck import LoadResult, check_ledgers


def result(answered: set[str], failed: set[str] = frozenset()) -> LoadResult:  # type: ignore[assignment]
    outcome = LoadResult(started=0.0)
    outcome.posts_answered = set(answered)
    outcome.posts_failed = set(failed)
    return outcome


def ledgers(tmp_path: Path, *files: list[str]) -> list[Path]:
    paths = []
    for index, ids in enumerate(files):
        path = tmp_path / f"app{index + 1}.log"
        path.write_text("".join(f"{i}\n" for i in ids))
        paths.append(path)
    return paths


def test_each_answered_post_processed_once_is_ok(tmp_path: Path) -> None:
    check = check_ledgers(result({"a", "b", "c"}, {"d"}), ledgers(tmp_path, ["a", "x"], ["b", "c"]))
    assert check.ok and (check.answered, check.failed, check.processed_once) == (3, 1, 3)


def test_a_duplicate_is_caught_even_across_instances(tmp_path: Path) -> None:
    check = check_ledgers(result({"a", "b"}), ledgers(tmp_path, ["a", "b"], ["b"]))  # b replayed elsewhere
    assert not check.ok and check.duplicated == 1 and check.processed_once == 1


def test_a_missing_post_is_caught(tmp_path: Path) -> None:
    check = check_ledgers(result({"a", "b"}), ledgers(tmp_path, ["a"]))
    assert not check.ok and check.missing == 1


def test_a_failed_post_that_was_processed_is_caught(tmp_path: Path) -> None:
    check = check_ledgers(result({"a"}, {"f"}), ledgers(tmp_path, ["a", "f"]))
    assert not check.ok and check.failed_but_processed == 1
