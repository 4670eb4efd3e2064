"""A foundation's noise schedule as this package's ``GaussianDiffusion`` arguments.

Two dialects name the same schedules: diffusers' ``scheduler_config.json`` and the CompVis LDM
``model.params``. In LDM's, "linear" is linear in sqrt(beta) -- what diffusers and this package call
``scaled_linear``. A leaf module: both foundation loaders use it and it imports neither.
"""
from __future__ import annotations

from typing import Any, Mapping

#: diffusers names -> this package's names
DIFFUSERS_SCHEDULES = {"scaled_linear": "scaled_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: CompVis LDM names -> this package's names
LDM_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "cosine"}
LDM_PREDICTIONS = {"eps": "eps", "x0": "x0", "v": "v"}


def _diffusion(source: str, schedule: str, prediction: str, schedules: Mapping[str, str], predictions: Mapping[str, str],
               num_timesteps: Any, beta_start: Any, beta_end: Any) -> dict[str, Any]:
    if schedule not in schedules:
        raise NotImplementedError(f"{source} beta_schedule {schedule!r} is not supported; choose one of: {', '.join(schedules)}")
    if prediction not in predictions:
        raise NotImplementedError(f"{source} prediction type {prediction!r} is not supported; choose one of: {', '.join(predictions)}")
    out: dict[str, Any] = {"schedule": schedules[schedule], "num_timesteps": int(num_timesteps), "prediction": predictions[prediction]}
    if out["schedule"] != "cosine":
        out["beta_start"], out["beta_end"] = float(beta_start), float(beta_end)
    return out


def diffusion_from_scheduler(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """GaussianDiffusion arguments of a diffusers ``scheduler_config.json``."""
    return _diffusion("scheduler", cfg.get("beta_schedule", "linear"), cfg.get("prediction_type", "epsilon"),
                      DIFFUSERS_SCHEDULES, DIFFUSERS_PREDICTIONS, cfg.get("num_train_timesteps", 1000),
                      cfg.get("beta_start", 1e-4), cfg.get("beta_end", 2e-2))


def diffusion_from_ldm(params: Mapping[str, Any]) -> dict[str, Any]:
    """GaussianDiffusion arguments (schedule, timesteps, betas, prediction) of LDM ``model.params``."""
    return _diffusion("LDM", params.get("beta_schedule", "linear"), params.get("parameterization", "eps"),
                      LDM_SCHEDULES, LDM_PREDICTIONS, params.get("timesteps", 1000),
                      params.get("linear_start", 1e-4), params.get("linear_end", 2e-2))
