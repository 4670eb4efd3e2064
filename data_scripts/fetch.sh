# Shared helpers of the download scripts; source it after setting TAG (the script's name in messages):
#   TAG=download_vg; source "$(dirname "$0")/fetch.sh"
# log MSG, die MSG, and fetch URL FILE [MD5]: a resumable download to FILE.part (curl -C -), renamed to
# FILE when complete, a no-op when FILE exists; with MD5 the file is checked (LAYOUTDIFFUSE_SKIP_CHECKSUM=1
# skips it, for mirrors serving other archives) and removed on a mismatch so that a re-run fetches it again.

log() { printf '[%s] %s\n' "${TAG:-download}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

fetch() {
  local url=$1 file=$2 md5=${3:-} got
  if [[ -s $file ]]; then log "have $file"; else
    mkdir -p "$(dirname "$file")"
    log "downloading $url -> $file"
    curl -fL --retry 5 --retry-delay 10 -C - -o "$file.part" "$url" \
      || die "download of $url failed; partial file kept at $file.part, re-run to resume"
    mv "$file.part" "$file"
  fi
  if [[ -n $md5 && ${LAYOUTDIFFUSE_SKIP_CHECKSUM:-0} != 1 ]]; then
    got=$(md5sum "$file" | cut -d' ' -f1)
    if [[ $got != "$md5" ]]; then
      rm -f "$file"
      die "checksum mismatch for $file (from $url): md5 $got, expected $md5; the file was removed, re-run to download it again"
    fi
    log "md5 ok: $file"
  fi
}
