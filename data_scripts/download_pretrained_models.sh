#!/usr/bin/env bash
# Download the foundational models LayoutDiffuse adapts into $LAYOUTDIFFUSE_DATA/pretrained (default ~/data/pretrained):
#
#   bash data_scripts/download_pretrained_models.sh                 # all three
#   bash data_scripts/download_pretrained_models.sh ldm-celebahq sd15
#
#   pretrained/ldm-celebahq-256/{model.ckpt,config.yaml}   LDM CelebA-HQ 256 (CompVis latent-diffusion, VQ-f4)
#   pretrained/stable-diffusion-v1-5/                      Stable Diffusion 1.5, diffusers layout (fp32 safetensors)
#   pretrained/stable-diffusion-2-1-base/                  Stable Diffusion 2.1 (512, eps), diffusers layout
# (a Stable Diffusion folder is named after its Hub repo, so SD21_REPO=stabilityai/stable-diffusion-2-1
#  lands in pretrained/stable-diffusion-2-1/)
#
# Idempotent and resumable: the LDM zip resumes from its .part file and finished models are
# recorded in pretrained/.done/; the Stable Diffusion snapshots go through huggingface_hub
# (resumes, skips files already there) and every weight file is checked against the sha256 the
# Hub publishes. CompVis publishes no checksum for the LDM zip: it is checked with `unzip -t`.
# Environment: LAYOUTDIFFUSE_DATA; SD15_REPO (default stable-diffusion-v1-5/stable-diffusion-v1-5),
# SD21_REPO (default stabilityai/stable-diffusion-2-1-base; stabilityai/stable-diffusion-2-1 for the
# 768 v-prediction model), HF_TOKEN (for gated mirrors), LDM_CELEBA_URL, LDM_CELEBA_CONFIG_URL,
# PYTHON (with huggingface_hub: pip install 'layoutdiffuse[sd]'), KEEP_ARCHIVES=1.
set -euo pipefail

ROOT="${LAYOUTDIFFUSE_DATA:-$HOME/data}"
ROOT="${ROOT/#\~/$HOME}"
DEST="$ROOT/pretrained"
DONE="$DEST/.done"
PYTHON="${PYTHON:-python}"
SD15_REPO="${SD15_REPO:-stable-diffusion-v1-5/stable-diffusion-v1-5}"
SD21_REPO="${SD21_REPO:-stabilityai/stable-diffusion-2-1-base}"
LDM_CELEBA_URL="${LDM_CELEBA_URL:-https://ommer-lab.com/files/latent-diffusion/celeba.zip}"
LDM_CELEBA_CONFIG_URL="${LDM_CELEBA_CONFIG_URL:-https://raw.githubusercontent.com/CompVis/latent-diffusion/main/configs/latent-diffusion/celebahq-ldm-vq-4.yaml}"

TAG=download_pretrained_models
source "$(dirname "${BASH_SOURCE[0]}")/fetch.sh"  # log, die, fetch


ldm_celebahq() {
  local out="$DEST/ldm-celebahq-256" zip="$DEST/ldm-celebahq-256.zip"
  if [[ -e $DONE/ldm-celebahq-256 ]]; then log "ldm-celebahq-256: already done"; return 0; fi
  command -v curl >/dev/null || die "needs curl"
  fetch "$LDM_CELEBA_URL" "$zip"
  unzip -tq "$zip" >/dev/null || { rm -f "$zip"; die "$zip is corrupt (unzip -t failed); removed, re-run"; }
  mkdir -p "$out"
  unzip -q -o "$zip" -d "$out" || die "cannot extract $zip"
  [[ -f $out/model.ckpt ]] || die "$zip did not contain model.ckpt"
  fetch "$LDM_CELEBA_CONFIG_URL" "$out/config.yaml"
  mkdir -p "$DONE" && touch "$DONE/ldm-celebahq-256"
  if [[ ${KEEP_ARCHIVES:-0} != 1 ]]; then rm -f "$zip"; fi
}

hub_snapshot() {  # hub_snapshot REPO NAME
  local repo=$1 name=$2
  if [[ -e $DONE/$name ]]; then log "$name: already done ($repo)"; return 0; fi
  "$PYTHON" -c "import huggingface_hub" 2>/dev/null \
    || die "$name needs huggingface_hub in $PYTHON: pip install 'layoutdiffuse[sd]' (or set PYTHON=...)"
  log "$name: downloading $repo into $DEST/$name"
  "$PYTHON" - "$repo" "$DEST/$name" <<'PY' || die "$2: download or checksum failed for $1 (re-run to resume; set HF_TOKEN if the repo is gated)"
import hashlib, sys
from pathlib import Path
from huggingface_hub import HfApi, snapshot_download

repo, dest = sys.argv[1], Path(sys.argv[2])
snapshot_download(repo, local_dir=dest,
                  allow_patterns=["model_index.json", "scheduler/*", "text_encoder/*", "tokenizer/*", "unet/*", "vae/*",
                                  "feature_extractor/*"],
                  ignore_patterns=["*.bin", "*.ckpt", "*.msgpack", "*.onnx", "*.pb", "*.h5", "*fp16*", "*non_ema*"])
files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and ".cache" not in p.parts)
for info in HfApi().get_paths_info(repo, files):
    lfs = getattr(info, "lfs", None)
    if lfs is None:
        continue
    expected = lfs["sha256"] if isinstance(lfs, dict) else lfs.sha256
    digest = hashlib.sha256()
    with open(dest / info.path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        (dest / info.path).unlink()
        sys.exit(f"sha256 mismatch for {dest / info.path} (removed): {digest.hexdigest()} != {expected}")
    print(f"sha256 ok: {info.path}", file=sys.stderr)
PY
  mkdir -p "$DONE" && touch "$DONE/$name"
}

models=("$@")
[[ ${#models[@]} -gt 0 ]] || models=(ldm-celebahq sd15 sd21)
mkdir -p "$DEST"
for m in "${models[@]}"; do
  case $m in
    ldm-celebahq) ldm_celebahq ;;
    sd15) hub_snapshot "$SD15_REPO" "${SD15_REPO##*/}" ;;
    sd21) hub_snapshot "$SD21_REPO" "${SD21_REPO##*/}" ;;
    *) die "unknown model '$m'; choose from: ldm-celebahq sd15 sd21" ;;
  esac
done
log "pretrained models ready in $DEST (${models[*]})"
