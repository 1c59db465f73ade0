#!/usr/bin/env bash
# Re-extract data/digits/digits.csv.gz from the scikit-learn wheel, in a throwaway virtualenv,
# and check that it is byte-identical to the committed copy.
#
# Pinned: Python 3.11, scikit-learn 1.9.1 (numpy 2.4.6, scipy 1.17.1 came with it). The file is
# shipped verbatim inside the package as sklearn/datasets/data/digits.csv.gz; this script copies it,
# it does not regenerate it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "scikit-learn==1.9.1"
src="$("$venv/bin/python" -c 'import sklearn.datasets, os; print(os.path.join(os.path.dirname(sklearn.datasets.__file__), "data", "digits.csv.gz"))')"
want=09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22
got="$(sha256sum "$src" | cut -d' ' -f1)"
if [ "$got" != "$want" ]; then
    echo "extract.sh: sha256 of $src is $got, expected $want" >&2
    exit 1
fi
cp "$src" "$here/digits.csv.gz"
echo "wrote $here/digits.csv.gz (sha256 $got)"
