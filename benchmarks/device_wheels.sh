#!/usr/bin/env bash
# Wheels the GPU machine lacks for papermill (its image has torch, pytest, matplotlib, pandas,
# seaborn, tqdm, jinja2, pyyaml, psutil, but no Jupyter stack), for CPython 3.12 on x86-64.
# Run here (it reaches PyPI; the GPU machine reaches nothing), then name .whl in the lease's
# `carry` and start the lease command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(papermill nbclient nbformat jupyter_client jupyter_core ipykernel ipython pyzmq tornado traitlets
          comm debugpy matplotlib-inline nest-asyncio ansicolors tenacity entrypoints fastjsonschema jsonschema
          jsonschema-specifications referencing rpds-py platformdirs pexpect ptyprocess prompt-toolkit wcwidth
          jedi parso decorator stack-data asttokens executing pure-eval ipython-pygments-lexers ipywidgets
          widgetsnbextension jupyterlab-widgets nbval)
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$tag")
done
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${PACKAGES[@]}"
du -sh .whl && ls .whl | wc -l
