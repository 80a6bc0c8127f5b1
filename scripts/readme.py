"""Write a benchmark's results into README.md, between ``<!-- results:NAME -->`` markers.

Numbers in the README's results section are only ever written by the scripts that measured them.
"""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def write_section(name, markdown, readme=README):
    """Replace the body between the markers of section ``name`` (appended if missing)."""
    text = readme.read_text()
    begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)
