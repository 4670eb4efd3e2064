#!/usr/bin/env bash
# Download Visual Genome 1.4 and sg2im's split into $LAYOUTDIFFUSE_DATA/vg (default ~/data/vg):
#
#   bash data_scripts/download_vg.sh                     # annotations, images (~15 GB), split
#   bash data_scripts/download_vg.sh annotations split   # parts: annotations images split
#   python data_scripts/preprocess_vg.py                 # then: vocabulary + split files for the loader
#
# Result: vg/{image_data,objects,attributes,relationships}.json, vg/{object,relationship}_alias.txt,
#         vg/vg_splits.json (sg2im train/val/test image ids), vg/images/VG_100K{,_2}/<id>.jpg
#
# Idempotent and resumable: downloads resume from .part files (curl -C -); finished archives are
# recorded in vg/.done/ and never fetched again; archives are deleted after extraction unless
# KEEP_ARCHIVES=1. Visual Genome publishes no checksums: archives are checked with `unzip -t`.
# Environment: LAYOUTDIFFUSE_DATA, VG_DATA_URL, VG_IMAGES_URL, VG_SPLITS_URL (mirrors), KEEP_ARCHIVES=1.
set -euo pipefail

ROOT="${LAYOUTDIFFUSE_DATA:-$HOME/data}"
ROOT="${ROOT/#\~/$HOME}"
DEST="$ROOT/vg"
DONE="$DEST/.done"
VG_DATA_URL="${VG_DATA_URL:-https://homes.cs.washington.edu/~ranjay/visualgenome/data/dataset}"
VG_IMAGES_URL="${VG_IMAGES_URL:-https://cs.stanford.edu/people/rak248}"
VG_SPLITS_URL="${VG_SPLITS_URL:-https://raw.githubusercontent.com/google/sg2im/master/sg2im/data/vg_splits.json}"

TAG=download_vg
source "$(dirname "${BASH_SOURCE[0]}")/fetch.sh"  # log, die, fetch


# step ARCHIVE URL INTO CHECK: download ARCHIVE, test and extract it into INTO, require INTO/CHECK, mark done.
step() {
  local name=$1 url=$2 into=$3 check=$4
  if [[ -e $DONE/$name ]]; then log "$name: already done (marker $DONE/$name)"; return 0; fi
  fetch "$url" "$DEST/$name"
  if ! unzip -tq "$DEST/$name" >/dev/null; then
    rm -f "$DEST/$name"
    die "$DEST/$name is corrupt (unzip -t failed); it was removed, re-run to download it again"
  fi
  log "$name: extracting into $into"
  mkdir -p "$into"
  unzip -q -o "$DEST/$name" -d "$into" || die "cannot extract $DEST/$name"
  [[ -e $into/$check ]] || die "$DEST/$name did not contain $check"
  mkdir -p "$DONE" && touch "$DONE/$name"
  if [[ ${KEEP_ARCHIVES:-0} != 1 ]]; then rm -f "$DEST/$name"; fi
}

command -v curl >/dev/null || die "needs curl"
command -v unzip >/dev/null || die "needs unzip"
parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(annotations images split)
mkdir -p "$DEST"
for part in "${parts[@]}"; do
  case $part in
    annotations)
      for name in image_data objects attributes relationships; do
        step "$name.json.zip" "$VG_DATA_URL/$name.json.zip" "$DEST" "$name.json"
      done
      fetch "$VG_DATA_URL/object_alias.txt" "$DEST/object_alias.txt"
      fetch "$VG_DATA_URL/relationship_alias.txt" "$DEST/relationship_alias.txt" ;;
    images)
      step images.zip "$VG_IMAGES_URL/VG_100K_2/images.zip" "$DEST/images" VG_100K
      step images2.zip "$VG_IMAGES_URL/VG_100K_2/images2.zip" "$DEST/images" VG_100K_2 ;;
    split)
      fetch "$VG_SPLITS_URL" "$DEST/vg_splits.json" ;;
    *) die "unknown part '$part'; choose from: annotations images split" ;;
  esac
done
log "Visual Genome ready in $DEST (parts: ${parts[*]}); next: python data_scripts/preprocess_vg.py"
