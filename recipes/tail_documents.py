"""Print the last FRACTION of a `<|endoftext|>`-separated text file's documents (the held-out part).

python recipes/tail_documents.py DATA.txt 0.05 > heldout.txt
"""

import sys

from gptcli.data import DOC_SEPARATOR, load_documents


def main() -> None:
    path, fraction = sys.argv[1], float(sys.argv[2])
    docs = load_documents([path])
    keep = docs[len(docs) - max(1, round(len(docs) * fraction)) :]
    sys.stdout.write(f"\n{DOC_SEPARATOR}\n".join(d.text for d in keep) + "\n")


if __name__ == "__main__":
    main()
