# Out-of-distribution evaluation of a run: Ambrose Bierce's "The Devil's Dictionary" (1911, public
# domain; satirical definitions and verse, unlike the Wikipedia training corpus), taken from
# Debian's dict-devil package at run time (nothing of it is committed), then
# `saescope evaluate --text` and the table of delta LM loss on it.
# Run from the repository with the virtual environment active:  bash experiments/ood_text.sh [RUN]
set -e
RUN=${1:-runs/default}
TMP=$(mktemp -d)
(cd "$TMP" && apt-get download dict-devil >/dev/null && dpkg-deb -x dict-devil_*.deb pkg)
zcat "$TMP"/pkg/usr/share/dictd/devil.dict.dz > runs/devils_dictionary.txt
rm -rf "$TMP"
saescope evaluate --out "$RUN" --text runs/devils_dictionary.txt --eval-sequences 8 --eval-context-len 256 \
  --suite core,position,topics
