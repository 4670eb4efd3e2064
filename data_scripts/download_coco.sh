#!/usr/bin/env bash
# Download COCO 2017 for the COCO-stuff layout benchmark into $LAYOUTDIFFUSE_DATA/coco (default ~/data/coco):
#
#   bash data_scripts/download_coco.sh                       # everything (~20 GB of archives)
#   bash data_scripts/download_coco.sh annotations stuff val # only what the val split needs (~2 GB)
#
# Parts: annotations (instances + captions, train and val), stuff (COCO-stuff boxes), val, train.
# Result: coco/annotations/{instances,stuff,captions}_{train,val}2017.json, coco/{train,val}2017/*.jpg
#
# Idempotent and resumable: an interrupted download resumes from its .part file (curl -C -); a part
# that finished is recorded in coco/.done/<archive> and never downloaded again. Archives are checked
# against their md5 (COCO publishes no checksums; these are the values used across the community,
# e.g. by PaddleDetection) and deleted after extraction unless KEEP_ARCHIVES=1.
# Environment: LAYOUTDIFFUSE_DATA (root), COCO_URL (mirror, default http://images.cocodataset.org),
# KEEP_ARCHIVES=1, LAYOUTDIFFUSE_SKIP_CHECKSUM=1 (for mirrors serving different archives).
set -euo pipefail

ROOT="${LAYOUTDIFFUSE_DATA:-$HOME/data}"
ROOT="${ROOT/#\~/$HOME}"
DEST="$ROOT/coco"
DONE="$DEST/.done"
COCO_URL="${COCO_URL:-http://images.cocodataset.org}"

TAG=download_coco
source "$(dirname "${BASH_SOURCE[0]}")/fetch.sh"  # log, die, fetch


# step ARCHIVE URL MD5 CHECK: download ARCHIVE, extract it into $DEST, require $DEST/CHECK, mark it done.
step() {
  local name=$1 url=$2 md5=$3 check=$4
  if [[ -e $DONE/$name ]]; then log "$name: already done (marker $DONE/$name)"; return 0; fi
  fetch "$url" "$DEST/$name" "$md5"
  log "$name: extracting into $DEST"
  unzip -q -o "$DEST/$name" -d "$DEST" || die "cannot extract $DEST/$name; delete it and re-run"
  [[ -e $DEST/$check ]] || die "$DEST/$name did not contain $check"
  mkdir -p "$DONE" && touch "$DONE/$name"
  if [[ ${KEEP_ARCHIVES:-0} != 1 ]]; then rm -f "$DEST/$name"; fi
}

command -v curl >/dev/null || die "needs curl"
command -v unzip >/dev/null || die "needs unzip"
parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(annotations stuff val train)
mkdir -p "$DEST"
for part in "${parts[@]}"; do
  case $part in
    annotations) step annotations_trainval2017.zip "$COCO_URL/annotations/annotations_trainval2017.zip" \
                   f4bbac642086de4f52a3fdda2de5fa2c annotations/instances_val2017.json ;;
    stuff)       step stuff_annotations_trainval2017.zip "$COCO_URL/annotations/stuff_annotations_trainval2017.zip" \
                   2a27c15a2dfcbd2e1c9276dc23cac101 annotations/stuff_val2017.json ;;
    val)         step val2017.zip "$COCO_URL/zips/val2017.zip" 442b8da7639aecaf257c1dceb8ba8c80 val2017 ;;
    train)       step train2017.zip "$COCO_URL/zips/train2017.zip" cced6f7f71b7629ddf16f17bbcfab6b2 train2017 ;;
    *) die "unknown part '$part'; choose from: annotations stuff val train" ;;
  esac
done
log "COCO 2017 ready in $DEST (parts: ${parts[*]})"
