"""Deployment forms of a student (or of its teacher, for comparison), each checked against the PyTorch model.

Forms: `pytorch` (the saved checkpoint), `pytorch-int8` (dynamic int8 linear layers, for CPUs), `ct2-float32`,
`ct2-float16`, `ct2-int8`, `ct2-int8_float16` (CTranslate2, what faster-whisper runs: Whisper only), `onnx` and
`onnx-int8` (ONNX Runtime; int8 from its dynamic quantiser). The conversions are the libraries' own:
CTranslate2's Transformers converter, torch's ONNX exporter (optimum's exporter does not support transformers 5),
torch's and ONNX Runtime's dynamic quantisers. `Deployed` loads any form back for transcription, so evaluation
and the parity check run the very files a user deploys.
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, GenerationConfig, PreTrainedModel

from .families import family_of
from .student import load_model, save_quietly

logger = logging.getLogger(__name__)

FORMS = ("pytorch", "pytorch-int8", "ct2-float32", "ct2-float16", "ct2-int8", "ct2-int8_float16", "onnx", "onnx-int8")
EXTRA = "pip install 'hf-asr-distill[export]'"
RECORD = "deployment.json"
MODEL_FILES = ("*.safetensors", "model_int8.pt", "model.bin", "*.onnx", "*.onnx.data")  # what a form weighs
HF = "hf"  # subfolder with the model's transformers config and generation config (CTranslate2 owns config.json)


def _require(module: str, form: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"The {form} form needs {module.split('.')[0]}: {EXTRA}") from err


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"Unknown form {form!r}; choose one of {', '.join(FORMS)}.")


def _save_processor(processor: Any, folder: Path) -> None:
    processor.save_pretrained(folder)
    # converters and runtimes read the feature extractor's own file (transformers 5 folds it into the processor's)
    getattr(processor, "feature_extractor", processor).save_pretrained(folder)


def export_model(model: PreTrainedModel | str, processor: Any, output_dir: str | Path, form: str,
                 example_batch: dict[str, Any] | None = None) -> Path:
    """Write `model` in a deployment `form` into `output_dir` with its processor files; return the folder.

    ONNX exports trace the model on `example_batch` (a collated batch; only its first row is used).
    """
    _check_form(form)
    model = load_model(model, dtype=torch.float32) if isinstance(model, str) else model
    if model.device.type != "cpu" or model.dtype != torch.float32:
        model = _cpu_fp32_copy(model)  # the converters run on fp32 CPU weights; the caller's model is left as is
    model = model.eval()
    family = family_of(model)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if form == "pytorch":
        model.save_pretrained(out)
    elif form == "pytorch-int8":
        quantized = _int8(model)
        torch.save(quantized.state_dict(), out / "model_int8.pt")
        model.config.save_pretrained(out)
    elif form.startswith("ct2-"):
        _to_ct2(model, processor, out, form)
    else:
        if example_batch is None:
            raise ValueError("ONNX export traces the model: pass example_batch= (a collated batch).")
        _to_onnx(model, processor, family.onnx_graphs(model, example_batch, processor), out, form)
    model.config.architectures = [type(model).__name__]  # as save_pretrained records it: the family reads it
    model.config.save_pretrained(out / HF)
    if model.can_generate():
        model.generation_config.save_pretrained(out / HF)
    _save_processor(processor, out)
    (out / RECORD).write_text(json.dumps({"form": form, "family": family.name, "params": params}, indent=2))
    return out


def _cpu_fp32_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The model in fp32 on the CPU, where the converters run, without touching the caller's (GPU, fp16) copy."""
    with tempfile.TemporaryDirectory() as tmp:
        save_quietly(model, tmp)
        if model.can_generate():
            model.generation_config.save_pretrained(tmp)
        return load_model(tmp, dtype=torch.float32)


def _int8(model: PreTrainedModel) -> PreTrainedModel:
    """Dynamic int8 linear layers (weights int8, activations quantised on the fly): PyTorch's simplest CPU path."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates this API in favour of torchao, which CPUs need not have
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _to_ct2(model: PreTrainedModel, processor: Any, out: Path, form: str) -> None:
    if not family_of(model).ct2_supported:
        raise ValueError(f"CTranslate2 exports are for Whisper models, not {family_of(model).title} models; "
                         "use onnx or pytorch-int8.")
    ctranslate2 = _require("ctranslate2", form)
    with tempfile.TemporaryDirectory() as tmp:
        save_quietly(model, tmp)
        model.generation_config.save_pretrained(tmp)  # languages and tasks: the converter reads them from here
        _save_processor(processor, Path(tmp))
        copy = [f for f in ("tokenizer.json", "preprocessor_config.json") if (Path(tmp) / f).exists()]
        if "tokenizer.json" not in copy:
            raise ValueError("CTranslate2 needs the fast tokenizer's tokenizer.json beside the model (faster-whisper "
                             "reads it); save the processor with a fast Whisper tokenizer.")
        converter = ctranslate2.converters.TransformersConverter(tmp, copy_files=copy)
        converter.convert(str(out), quantization=form.split("-", 1)[1], force=True)


def _to_onnx(model: PreTrainedModel, processor: Any, graphs: dict[str, tuple], out: Path, form: str) -> None:
    _require("onnx", form)
    for name, (module, args, inputs, outputs, axes) in graphs.items():
        path = out / f"{name}.onnx"
        with torch.no_grad():
            torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17, input_names=inputs,
                              output_names=outputs, dynamic_axes=axes)
        if form == "onnx-int8":
            quantization = _require("onnxruntime.quantization", form)
            # MatMul only: int8 convolutions are slower on CPUs and cost accuracy (measured on the conv front-ends)
            quantization.quantize_dynamic(str(path), str(path), weight_type=quantization.QuantType.QInt8,
                                          op_types_to_quantize=["MatMul"])


class Deployed:
    """A model in one deployment form, loaded back for transcription (evaluation and parity checks use this)."""

    def __init__(self, path: str | Path, name: str | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        record = json.loads((self.path / RECORD).read_text())
        self.form, self.params = record["form"], record["params"]
        self.name = name or self.path.name
        self.config = AutoConfig.from_pretrained(self.path / HF)
        self.family = family_of(self.config)
        self.generation_config = (GenerationConfig.from_pretrained(self.path / HF)
                                  if (self.path / HF / "generation_config.json").exists() else None)
        self.device = torch.device("cpu")
        self._load(threads)

    def _load(self, threads: int | None) -> None:
        if self.form == "pytorch":
            self.model = load_model(str(self.path)).eval()
        elif self.form == "pytorch-int8":
            self.model = _int8(self._skeleton().eval())
            self.model.load_state_dict(torch.load(self.path / "model_int8.pt", weights_only=False))
            if self.generation_config is not None:
                self.model.generation_config = self.generation_config
        elif self.form.startswith("ct2-"):
            ctranslate2 = _require("ctranslate2", self.form)
            self.model = ctranslate2.models.Whisper(str(self.path), device="cpu",
                                                    compute_type=self.form.split("-", 1)[1],
                                                    intra_threads=threads or 0)
        else:
            ort = _require("onnxruntime", self.form)
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.model = {p.stem: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                          for p in sorted(self.path.glob("*.onnx"))}

    def _skeleton(self) -> PreTrainedModel:
        from transformers import AutoModelForCTC, AutoModelForSpeechSeq2Seq

        auto = AutoModelForSpeechSeq2Seq if self.config.is_encoder_decoder else AutoModelForCTC
        # fp32 whatever the checkpoint was saved in: dynamic int8 layers take fp32 activations
        return auto.from_config(self.config, dtype=torch.float32)

    def transcribe(self, processor: Any, batch: dict[str, Any], generate_kwargs: dict | None = None) -> list[str]:
        """Greedy transcripts of one collated batch in this form."""
        if self.form.startswith("pytorch"):
            with torch.inference_mode():
                return self.family.transcribe(self.model, processor, batch, generate_kwargs)
        if self.form.startswith("ct2-"):
            return self.family.ct2_transcribe(self.model, self.config, self.generation_config, processor, batch)
        return self.family.onnx_transcribe(self.model, self.config, self.generation_config, processor, batch)

    def size_bytes(self) -> int:
        """Bytes of the model's own files (weights and graphs; not the processor's or the configs)."""
        return sum(f.stat().st_size for pattern in MODEL_FILES for f in self.path.glob(pattern))


def deploy(model: PreTrainedModel | str, processor: Any, output_dir: str | Path, form: str,
           example_batch: dict[str, Any] | None = None, name: str | None = None) -> Deployed:
    """`export_model`, then load the result back (`Deployed`)."""
    return Deployed(export_model(model, processor, output_dir, form, example_batch), name=name)


def parity_check(reference: PreTrainedModel, deployed: Deployed, processor: Any, dataset: Any, batch_size: int = 8,
                 max_wer_delta: float = 0.01) -> dict[str, Any]:
    """Greedy transcripts of the exported model against the PyTorch model's on the same rows.

    Returns the number of identical transcripts, each side's WER against the references and their difference;
    `ok` is False when the exported form is more than `max_wer_delta` (absolute, 0.01 = 1 point) worse.
    """
    from .data import collator_for
    from .evaluation import asr_scores

    collate = collator_for(processor, reference)
    rows = [dataset[i] for i in range(len(dataset))]
    ours, theirs = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        batch = collate(chunk)
        batch["max_seconds"] = max(r["audio_seconds"] for r in chunk)
        with torch.inference_mode():
            ours += family_of(reference).transcribe(reference.eval(), processor, batch)
        theirs += deployed.transcribe(processor, batch)
    references = [r["text"] for r in rows]
    wer_ref = asr_scores(ours, references, tokenizer=processor.tokenizer)["wer"]
    wer_dep = asr_scores(theirs, references, tokenizer=processor.tokenizer)["wer"]
    result = {"form": deployed.form, "utterances": len(rows), "identical": sum(a == b for a, b in zip(ours, theirs)),
              "wer_pytorch": wer_ref, "wer_deployed": wer_dep, "wer_delta": wer_dep - wer_ref,
              "max_wer_delta": max_wer_delta, "ok": wer_dep - wer_ref <= max_wer_delta}
    level = logging.INFO if result["ok"] else logging.WARNING
    logger.log(level, "parity of %s: %d/%d transcripts identical, WER %.2f%% vs %.2f%% (PyTorch)", deployed.form,
               result["identical"], len(rows), 100 * wer_dep, 100 * wer_ref)
    return result
