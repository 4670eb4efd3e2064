#!/usr/bin/env bash
# Download CelebAMask-HQ into $LAYOUTDIFFUSE_DATA/CelebAMask-HQ (default ~/data) and merge its part masks:
#
#   bash data_scripts/download_celebMask.sh
#
# Result: CelebAMask-HQ/{CelebA-HQ-img/<i>.jpg, CelebAMask-HQ-mask-anno/<k>/<i:05d>_<part>.png,
#         CelebA-HQ-to-CelebA-mapping.txt} and our merged label maps CelebAMask-HQ/CelebAMask-HQ-mask/<i>.png.
#
# The archive (CelebAMask-HQ.zip, ~3 GB) lives on Google Drive, which refuses downloads once the
# file's daily quota is spent ("Too many users have viewed or downloaded this file recently").
# The script then exits with status 2 and says where to download it by hand and where to put it;
# re-running it picks the manual download up. No checksum is published: the zip is checked with
# `unzip -t`. Idempotent: finished steps are recorded in CelebAMask-HQ/.done/, the merge keeps
# existing label maps. Uses gdown when installed (pip install gdown), else curl.
# Environment: LAYOUTDIFFUSE_DATA, CELEBAMASK_URL (direct URL of the zip, e.g. a mirror),
# PYTHON (interpreter with layoutdiffuse installed, default python), KEEP_ARCHIVES=1.
set -euo pipefail

ROOT="${LAYOUTDIFFUSE_DATA:-$HOME/data}"
ROOT="${ROOT/#\~/$HOME}"
DEST="$ROOT/CelebAMask-HQ"
DONE="$DEST/.done"
ZIP="$ROOT/CelebAMask-HQ.zip"
GDRIVE_ID=1badu11NqxGf6qM3PTTooQDJvQbejgbTv
PYTHON="${PYTHON:-python}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

TAG=download_celebMask
source "$(dirname "${BASH_SOURCE[0]}")/fetch.sh"  # log, die, fetch

manual() {
  cat >&2 <<MSG
[download_celebMask] CelebAMask-HQ could not be downloaded automatically${1:+ ($1)}.
Google Drive refuses downloads of this file once its daily quota is used up. Download it by hand:
    https://drive.google.com/open?id=$GDRIVE_ID    (Google Drive: CelebAMask-HQ.zip, ~3 GB)
    https://pan.baidu.com/s/1wN1E-B1bJ7mE1mrn9loj5g    (Baidu Drive)
(both listed on https://github.com/switchablenorms/CelebAMask-HQ), then either
    put the zip at      $ZIP
    or unzip it so that $DEST/CelebA-HQ-img and $DEST/CelebAMask-HQ-mask-anno exist,
and run this script again: it checks, extracts and merges the masks.
MSG
  exit 2
}

is_zip() { [[ -s $1 ]] && [[ $(head -c 4 "$1" | od -An -tx1 | tr -d ' \n') == 504b0304 ]]; }

download() {  # -> $ZIP, or the manual-download message
  local part="$ZIP.part"
  if [[ -n ${CELEBAMASK_URL:-} ]]; then
    curl -fL --retry 3 -C - -o "$part" "$CELEBAMASK_URL" || manual "download from $CELEBAMASK_URL failed"
  elif command -v gdown >/dev/null; then
    gdown --continue "$GDRIVE_ID" -O "$part" || manual "gdown failed"
  else
    curl -fL --retry 3 -C - -o "$part" \
      "https://drive.usercontent.google.com/download?id=$GDRIVE_ID&export=download&confirm=t" || manual "curl failed"
  fi
  if ! is_zip "$part"; then
    local why="the server answered with a web page, not the zip"
    grep -qi -e "too many users" -e "quota" "$part" 2>/dev/null && why="Google Drive download quota exceeded"
    rm -f "$part"
    manual "$why"
  fi
  mv "$part" "$ZIP"
}

command -v unzip >/dev/null || die "needs unzip"
mkdir -p "$ROOT"
if [[ -e $DONE/extracted ]]; then
  log "already extracted (marker $DONE/extracted)"
elif [[ -d $DEST/CelebA-HQ-img && -d $DEST/CelebAMask-HQ-mask-anno && -f $DEST/CelebA-HQ-to-CelebA-mapping.txt ]]; then
  log "found an unzipped copy in $DEST"
  mkdir -p "$DONE" && touch "$DONE/extracted"
else
  if [[ -s $ZIP ]]; then log "using $ZIP"; else command -v curl >/dev/null || die "needs curl"; download; fi
  is_zip "$ZIP" || { log "$ZIP is not a zip archive"; manual "bad archive at $ZIP"; }
  unzip -tq "$ZIP" >/dev/null || { log "$ZIP is corrupt (unzip -t failed); delete it"; manual "corrupt archive"; }
  log "extracting $ZIP into $ROOT"
  unzip -q -o "$ZIP" -d "$ROOT" || die "cannot extract $ZIP"
  for need in CelebA-HQ-img CelebAMask-HQ-mask-anno CelebA-HQ-to-CelebA-mapping.txt; do
    [[ -e $DEST/$need ]] || die "$ZIP did not contain CelebAMask-HQ/$need"
  done
  mkdir -p "$DONE" && touch "$DONE/extracted"
  if [[ ${KEEP_ARCHIVES:-0} != 1 ]]; then rm -f "$ZIP"; fi
fi

if [[ -e $DONE/merged ]]; then
  log "part masks already merged (marker $DONE/merged)"
else
  log "merging part masks into $DEST/CelebAMask-HQ-mask"
  LAYOUTDIFFUSE_DATA="$ROOT" "$PYTHON" "$HERE/merge_celebamask.py" --root "$ROOT" || die "merging the part masks failed (see above)"
  touch "$DONE/merged"
fi
log "CelebAMask-HQ ready in $DEST"
