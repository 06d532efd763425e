"""ComfyUI's core nodes as `/object_info` describes them, and `validate_prompt` over them.

Written from comfyanonymous/ComfyUI (read, not copied): `nodes.py` (each class's
INPUT_TYPES, RETURN_TYPES, CATEGORY, OUTPUT_NODE; the model lists come from
`folder_paths.get_filename_list(folder)`), `comfy_extras/nodes_upscale_model.py`,
`server.py` `node_info` (the per-class record `/object_info` answers) and `execution.py`
`validate_prompt` / `validate_inputs` (the 400 body of a rejected graph).

The emulator keeps the model files "installed" per folder (checkpoints, loras, vae,
upscale_models, input); a combo input whose list is a folder is checked against it, as
the real server checks against the files it scanned.

How the real validation reads (and so how this one does):
- every node's class_type must exist, else the whole prompt is refused at once
  (`missing_node_type` on current servers, `invalid_prompt` "Cannot execute because node
  X does not exist." on servers before it) with empty node_errors;
- no output node: `prompt_no_outputs`;
- only nodes an output node depends on are validated, each once; per node: every
  required input present (`required_input_missing`), a link is `[node_id, slot]`
  (`bad_linked_input`) whose output type fits (`return_type_mismatch`), a link to a node
  or slot that does not exist raises inside validation (`exception_during_inner_validation`
  on the node holding the link, `exception_during_validation` when that node is the
  output itself), values convert to INT/FLOAT/STRING/BOOLEAN (`invalid_input_type`),
  respect min/max (`value_smaller_than_min`/`value_bigger_than_max`) and combo lists
  (`value_not_in_list`; past 20 choices the list is not echoed: details say
  "(list of length N)" and `input_config` is null);
- an upstream node's errors are reported under its own id, with `dependent_outputs`;
  the downstream nodes that only failed because of it are not listed;
- when no output is valid: 400 `prompt_outputs_failed_validation` whose `details` joins
  the output nodes' own errors; when some are: 200, the prompt runs the valid outputs
  and `node_errors` still lists the failing nodes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

MAX_RESOLUTION = 16384

#: the folders whose files a test can set (`ComfyUIEmulator.installed`)
FOLDERS = ("checkpoints", "loras", "vae", "upscale_models", "input")

DEFAULT_INSTALLED: dict[str, list[str] | None] = {
    "checkpoints": [
        "sd_xl_base_1.0.safetensors",
        "sd_xl_refiner_1.0.safetensors",
        "v1-5-pruned-emaonly.safetensors",
    ],
    # None: any file name is accepted (as if every avatar's LoRA had been copied in);
    # /object_info shows the input as a free string (see node_info).
    "loras": None,
    "vae": ["sdxl_vae.safetensors", "vae-ft-mse-840000-ema-pruned.safetensors"],
    "upscale_models": ["4x-UltraSharp.pth", "RealESRGAN_x4plus.pth"],
    "input": ["example.png"],
}

SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun",
    "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu",
    "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "gradient_estimation", "er_sde", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
]
LATENT_UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
IMAGE_UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


class Folder(str):
    """A combo input whose choices are the files of one model folder."""


def _int(default: int, lo: int, hi: int, step: int = 1, **more: Any) -> tuple[str, dict]:
    return ("INT", {"default": default, "min": lo, "max": hi, "step": step, **more})


def _float(default: float, lo: float, hi: float, step: float = 0.01) -> tuple[str, dict]:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step})


SEED = _int(0, 0, 0xFFFFFFFFFFFFFFFF, control_after_generate=True)
STEPS = _int(20, 1, 10000)
CFG = ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})
SIZE = _int(512, 16, MAX_RESOLUTION, 8)
SCALE_SIZE = _int(512, 0, MAX_RESOLUTION, 8)
STRENGTH = _float(1.0, -100.0, 100.0)

#: class -> (display_name, category, python_module, inputs, outputs, output_node)
#: inputs: {"required": {name: spec}, "optional": ..., "hidden": ...}; a spec's first
#: item is a type name, a fixed choice list, or a Folder (filled from `installed`).
NODES: dict[str, tuple[str, str, str, dict[str, dict[str, Any]], tuple[str, ...], bool]] = {
    "CheckpointLoaderSimple": (
        "Load Checkpoint", "loaders", "nodes",
        {"required": {"ckpt_name": (Folder("checkpoints"), {
            "tooltip": "The name of the checkpoint (model) to load."})}},
        ("MODEL", "CLIP", "VAE"), False,
    ),
    "LoraLoader": (
        "Load LoRA", "loaders", "nodes",
        {"required": {
            "model": ("MODEL", {}), "clip": ("CLIP", {}),
            "lora_name": (Folder("loras"), {}),
            "strength_model": STRENGTH, "strength_clip": STRENGTH,
        }},
        ("MODEL", "CLIP"), False,
    ),
    "LoraLoaderModelOnly": (
        "LoraLoaderModelOnly", "loaders", "nodes",
        {"required": {
            "model": ("MODEL", {}), "lora_name": (Folder("loras"), {}),
            "strength_model": STRENGTH,
        }},
        ("MODEL",), False,
    ),
    "VAELoader": (
        "Load VAE", "loaders", "nodes",
        {"required": {"vae_name": (Folder("vae"), {})}}, ("VAE",), False,
    ),
    "UpscaleModelLoader": (
        "Load Upscale Model", "loaders", "comfy_extras.nodes_upscale_model",
        {"required": {"model_name": (Folder("upscale_models"), {})}},
        ("UPSCALE_MODEL",), False,
    ),
    "CLIPSetLastLayer": (
        "CLIP Set Last Layer", "conditioning", "nodes",
        {"required": {"clip": ("CLIP", {}), "stop_at_clip_layer": _int(-1, -24, -1)}},
        ("CLIP",), False,
    ),
    "CLIPTextEncode": (
        "CLIP Text Encode (Prompt)", "conditioning", "nodes",
        {"required": {
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "clip": ("CLIP", {}),
        }},
        ("CONDITIONING",), False,
    ),
    "ConditioningCombine": (
        "Conditioning (Combine)", "conditioning", "nodes",
        {"required": {"conditioning_1": ("CONDITIONING", {}),
                      "conditioning_2": ("CONDITIONING", {})}},
        ("CONDITIONING",), False,
    ),
    "KSampler": (
        "KSampler", "sampling", "nodes",
        {"required": {
            "model": ("MODEL", {}), "seed": SEED, "steps": STEPS, "cfg": CFG,
            "sampler_name": (SAMPLERS, {}), "scheduler": (SCHEDULERS, {}),
            "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}),
            "latent_image": ("LATENT", {}), "denoise": _float(1.0, 0.0, 1.0),
        }},
        ("LATENT",), False,
    ),
    "KSamplerAdvanced": (
        "KSampler (Advanced)", "sampling", "nodes",
        {"required": {
            "model": ("MODEL", {}), "add_noise": (["enable", "disable"], {}),
            "noise_seed": SEED, "steps": STEPS, "cfg": CFG,
            "sampler_name": (SAMPLERS, {}), "scheduler": (SCHEDULERS, {}),
            "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}),
            "latent_image": ("LATENT", {}),
            "start_at_step": _int(0, 0, 10000), "end_at_step": _int(10000, 0, 10000),
            "return_with_leftover_noise": (["disable", "enable"], {}),
        }},
        ("LATENT",), False,
    ),
    "EmptyLatentImage": (
        "Empty Latent Image", "latent", "nodes",
        {"required": {"width": SIZE, "height": SIZE, "batch_size": _int(1, 1, 4096)}},
        ("LATENT",), False,
    ),
    "LatentUpscale": (
        "Upscale Latent", "latent", "nodes",
        {"required": {
            "samples": ("LATENT", {}), "upscale_method": (LATENT_UPSCALE, {}),
            "width": SCALE_SIZE, "height": SCALE_SIZE,
            "crop": (["disabled", "center"], {}),
        }},
        ("LATENT",), False,
    ),
    "LatentUpscaleBy": (
        "Upscale Latent By", "latent", "nodes",
        {"required": {
            "samples": ("LATENT", {}), "upscale_method": (LATENT_UPSCALE, {}),
            "scale_by": _float(1.5, 0.01, 8.0),
        }},
        ("LATENT",), False,
    ),
    "VAEDecode": (
        "VAE Decode", "latent", "nodes",
        {"required": {"samples": ("LATENT", {}), "vae": ("VAE", {})}}, ("IMAGE",), False,
    ),
    "VAEEncode": (
        "VAE Encode", "latent", "nodes",
        {"required": {"pixels": ("IMAGE", {}), "vae": ("VAE", {})}}, ("LATENT",), False,
    ),
    "LoadImage": (
        "Load Image", "image", "nodes",
        {"required": {"image": (Folder("input"), {"image_upload": True})}},
        ("IMAGE", "MASK"), False,
    ),
    "ImageScale": (
        "Upscale Image", "image/upscaling", "nodes",
        {"required": {
            "image": ("IMAGE", {}), "upscale_method": (IMAGE_UPSCALE, {}),
            "width": _int(512, 0, MAX_RESOLUTION), "height": _int(512, 0, MAX_RESOLUTION),
            "crop": (["disabled", "center"], {}),
        }},
        ("IMAGE",), False,
    ),
    "ImageScaleBy": (
        "Upscale Image By", "image/upscaling", "nodes",
        {"required": {
            "image": ("IMAGE", {}), "upscale_method": (IMAGE_UPSCALE, {}),
            "scale_by": _float(1.0, 0.01, 8.0),
        }},
        ("IMAGE",), False,
    ),
    "ImageUpscaleWithModel": (
        "Upscale Image (using Model)", "image/upscaling", "comfy_extras.nodes_upscale_model",
        {"required": {"upscale_model": ("UPSCALE_MODEL", {}), "image": ("IMAGE", {})}},
        ("IMAGE",), False,
    ),
    "SaveImage": (
        "Save Image", "image", "nodes",
        {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {"default": "ComfyUI"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        (), True,
    ),
    "PreviewImage": (
        "Preview Image", "image", "nodes",
        {
            "required": {"images": ("IMAGE", {})},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        (), True,
    ),
}

OUTPUT_NODES = frozenset(name for name, spec in NODES.items() if spec[5])


#: how /object_info shows a folder that accepts any file name (`installed[folder]` None)
ANY_FILE = ["STRING", {"tooltip": "emulator: any file name is installed in this folder"}]


def _resolve(
    spec: tuple[Any, dict], files: Mapping[str, list[str]], open_folders: Collection[str] = ()
) -> list[Any]:
    kind, options = spec
    if isinstance(kind, Folder) and kind in open_folders:
        return [ANY_FILE[0], dict(ANY_FILE[1])]
    if isinstance(kind, Folder):
        return [list(files.get(kind, [])), dict(options)]
    if isinstance(kind, list):
        return [list(kind), dict(options)]
    return [kind, dict(options)] if options else [kind]


def node_info(
    name: str, files: Mapping[str, list[str]], open_folders: Collection[str] = ()
) -> dict[str, Any]:
    """One class as `GET /object_info` shows it (server.py `node_info`).

    A folder in `open_folders` accepts any file name; no list can say so, so its
    inputs are shown as free strings (a deviation: the real server always lists files;
    a test that checks file names sets the folder's list).
    """
    display, category, module, inputs, outputs, output_node = NODES[name]
    shown: dict[str, Any] = {}
    for section, entries in inputs.items():
        if section == "hidden":
            shown[section] = dict(entries)
        else:
            shown[section] = {
                key: _resolve(spec, files, open_folders) for key, spec in entries.items()
            }
    return {
        "input": shown,
        "input_order": {section: list(entries) for section, entries in inputs.items()},
        "output": list(outputs),
        "output_is_list": [False] * len(outputs),
        "output_name": list(outputs),
        "name": name,
        "display_name": display,
        "description": "",
        "python_module": module,
        "category": category,
        "output_node": output_node,
    }


def _error(kind: str, message: str, details: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


class _LinkBroken(Exception):
    """A link to a node or an output slot that does not exist (KeyError/IndexError)."""


class Validator:
    """One `validate_prompt` run over an API-format graph."""

    def __init__(
        self, graph: Any, files: Mapping[str, list[str]], legacy_missing_node: bool = False,
        lacking: Collection[str] = (),
    ) -> None:
        self.graph = graph
        self.lacking = frozenset(lacking)
        self.files = files
        self.legacy_missing_node = legacy_missing_node
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def run(self) -> tuple[dict[str, Any] | None, list[str], dict[str, Any]]:
        """(error or None, the valid output node ids, node_errors)."""
        if not isinstance(self.graph, dict) or not self.graph:
            return _error("prompt_no_outputs", "Prompt has no outputs", "", {}), [], {}
        outputs = []
        for nid, node in self.graph.items():
            if not isinstance(node, dict) or "class_type" not in node:
                title = (node.get("_meta") or {}).get("title") if isinstance(node, dict) else None
                return _error(
                    "missing_node_type",
                    f"Node '{title or f'ID #{nid}'}' has no class_type. The workflow may be "
                    "corrupted or a custom node is missing.",
                    f"Node ID '#{nid}'",
                    {"node_id": nid, "class_type": None, "node_title": title},
                ), [], {}
            kind = node["class_type"]
            if kind not in NODES or kind in self.lacking:
                if self.legacy_missing_node:
                    return _error(
                        "invalid_prompt", f"Cannot execute because node {kind} does not exist.",
                        f"Node ID '#{nid}'", {},
                    ), [], {}
                title = (node.get("_meta") or {}).get("title", kind)
                return _error(
                    "missing_node_type",
                    f"Node '{title}' not found. The custom node may not be installed.",
                    f"Node ID '#{nid}'",
                    {"node_id": nid, "class_type": kind, "node_title": title},
                ), [], {}
            if kind in OUTPUT_NODES:
                outputs.append(nid)
        if not outputs:
            return _error("prompt_no_outputs", "Prompt has no outputs", "", {}), [], {}
        good: list[str] = []
        own_errors: list[dict[str, Any]] = []
        node_errors: dict[str, Any] = {}
        for out in outputs:
            try:
                valid, reasons = self._node(out)
            except _LinkBroken as exc:
                valid = False
                reasons = [_error(
                    "exception_during_validation", "Exception when validating node", str(exc),
                    {"exception_type": exc.__cause__.__class__.__name__, "traceback": []},
                )]
                self.validated[out] = (False, reasons)
            if valid:
                good.append(out)
                continue
            own_errors.extend(reasons)
            for nid, (ok, found) in self.validated.items():
                if ok or not found:
                    continue
                entry = node_errors.setdefault(nid, {
                    "errors": found, "dependent_outputs": [],
                    "class_type": self.graph[nid]["class_type"],
                })
                entry["dependent_outputs"].append(out)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for e in own_errors)
            return _error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation",
                details, {},
            ), [], node_errors
        return None, good, node_errors

    def _choices(self, kind: Any) -> list[Any] | None:
        if isinstance(kind, Folder):
            return list(self.files.get(kind, []))
        return kind if isinstance(kind, list) else None

    def _node(self, nid: str) -> tuple[bool, list[dict[str, Any]]]:
        if nid in self.validated:
            return self.validated[nid]
        node = self.graph[nid]
        inputs = node.get("inputs") or {}
        spec = NODES[node["class_type"]][3]
        errors: list[dict[str, Any]] = []
        valid = True
        for section in ("required", "optional"):
            for name, (kind, options) in spec.get(section, {}).items():
                if name not in inputs:
                    if section == "required":
                        errors.append(_error(
                            "required_input_missing", "Required input is missing", name,
                            {"input_name": name},
                        ))
                    continue
                shown = _resolve((kind, options), self.files)
                shown = shown if len(shown) == 2 else [shown[0], {}]
                value = inputs[name]
                if isinstance(value, list):
                    error, upstream_ok = self._link(name, value, kind, shown)
                    if error is not None:
                        errors.append(error)
                    valid = valid and upstream_ok
                    continue
                error = self._value(name, value, kind, options, shown)
                if error is not None:
                    errors.append(error)
        result = (not errors and valid, errors)
        self.validated[nid] = result
        return result

    def _link(
        self, name: str, value: list[Any], kind: Any, shown: list[Any]
    ) -> tuple[dict[str, Any] | None, bool]:
        if len(value) != 2:
            return _error(
                "bad_linked_input",
                "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                {"input_name": name, "input_config": shown, "received_value": value},
            ), True
        source, slot = value
        try:
            source_kind = self.graph[source]["class_type"]
            received = NODES[source_kind][4][slot]
        except (KeyError, IndexError, TypeError) as exc:
            raise _LinkBroken(str(exc)) from exc
        expected = kind if isinstance(kind, str) and not isinstance(kind, Folder) else "COMBO"
        if received != expected and "*" not in (received, expected):
            return _error(
                "return_type_mismatch", "Return type mismatch between linked nodes",
                f"{name}, received_type({received}) mismatch input_type({expected})",
                {"input_name": name, "input_config": shown, "received_type": received,
                 "linked_node": value},
            ), True
        try:
            ok, _ = self._node(source)
        except _LinkBroken as exc:
            self.validated[source] = (False, [_error(
                "exception_during_inner_validation", "Exception when validating inner node",
                str(exc),
                {"input_name": name, "input_config": shown, "exception_message": str(exc),
                 "exception_type": exc.__cause__.__class__.__name__, "traceback": [],
                 "linked_node": value},
            )])
            return None, False
        return None, ok

    def _value(
        self, name: str, value: Any, kind: Any, options: dict[str, Any], shown: list[Any]
    ) -> dict[str, Any] | None:
        convert = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
        if isinstance(kind, str) and not isinstance(kind, Folder) and kind in convert:
            try:
                value = convert[kind](value)
            except (TypeError, ValueError) as exc:
                return _error(
                    "invalid_input_type", f"Failed to convert an input value to a {kind} value",
                    f"{name}, {value}, {exc}",
                    {"input_name": name, "input_config": shown, "received_value": value,
                     "exception_message": str(exc)},
                )
            if "min" in options and value < options["min"]:
                return _error(
                    "value_smaller_than_min",
                    f"Value {value} smaller than min of {options['min']}", name,
                    {"input_name": name, "input_config": shown, "received_value": value},
                )
            if "max" in options and value > options["max"]:
                return _error(
                    "value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                    name, {"input_name": name, "input_config": shown, "received_value": value},
                )
            return None
        choices = self._choices(kind)
        if choices is None or value in choices:
            return None
        config: list[Any] | None = shown
        listed = str(choices)
        if len(choices) > 20:  # the real server does not echo long model lists
            listed, config = f"(list of length {len(choices)})", None
        return _error(
            "value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
            {"input_name": name, "input_config": config, "received_value": value},
        )
