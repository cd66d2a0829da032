"""Grounded training data: v1g records read once (bad ones recorded, not fatal), served to the collator."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.data import Dataset

from ..data.v1g import read_v1g


class V1GDataset(Dataset):
    """Records from one or more v1g sources (JSONL/JSON/parquet). Items are `V1GRecord`s; images are loaded by
    the collator, so memory stays flat for large data."""

    def __init__(self, sources: list[str | Path], bad_log: str | Path | None = None, **validation):
        self.records = []
        bad = []
        for source in sources:
            result = read_v1g(source, **validation)
            self.records += result.records
            bad += [{"source": str(source), **vars(b)} for b in result.bad]
        self.bad = bad
        if bad_log is not None and bad:
            Path(bad_log).parent.mkdir(parents=True, exist_ok=True)
            with open(bad_log, "w") as fh:
                for b in bad:
                    fh.write(json.dumps(b, default=str) + "\n")
        if not self.records:
            raise ValueError(f"no valid records in {[str(s) for s in sources]} ({len(bad)} bad)")

    @property
    def lengths(self) -> list[int]:
        """A length per record for length-grouped batching: its ``num_tokens`` when the data has it, else the
        characters of its turns plus one per region box (a proxy: only the order matters)."""
        return [r.num_tokens if r.num_tokens else sum(len(t["value"]) for t in r.conversations) + len(r.regions)
                for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        return self.records[index]
