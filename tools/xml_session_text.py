"""One plenary session of an official Bundestag XML archive as plain text: "Speaker (Party):" then the speech.

For scoring models on German text none of them trained on, e.g. a period-20 session against models
trained on the period-19 text protocols:
    uv run python tools/xml_session_text.py ../shared/data/bundestag_xml/wp20.tar.gz 20100 out/compare/20100.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

from ml_playground.core.atomic import atomic_write_text
from ml_playground.data_pipeline.sources.bundestag_xml import iter_documents, parse_session


def session_text(archive: Path, session: str) -> str:
    for document in iter_documents(archive):
        if Path(document.name.rsplit(":", 1)[-1]).name.startswith(session):
            parsed = parse_session(document, interjections="strip")
            return "".join(
                f"{speech.speaker}{f' ({speech.party})' if speech.party else ''}:\n{speech.text}\n\n"
                for speech in parsed.speeches
            )
    raise SystemExit(f"no session {session} in {archive}")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        raise SystemExit("usage: xml_session_text.py ARCHIVE SESSION OUT")
    archive, session, out = Path(argv[0]), argv[1], Path(argv[2])
    atomic_write_text(out, session_text(archive, session))
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
