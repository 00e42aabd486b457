#!/usr/bin/env bash
# Download the wheels the GPU machine's image lacks (it has torch, torchvision, numpy, pandas,
# scikit-learn, timm, opencv, matplotlib, pytest-benchmark, ...) for its Python, into .whl/, which
# benchmarks/gpu/run.sh installs into /tmp/site. The list is what vsbench imports on the GPU run's
# path (decoding, data generation, the MLflow sqlite store; found by dumping sys.modules after a
# --tiny run, then checked by a --tiny run in a clean virtual environment holding only the image's
# packages and these wheels) minus what that image holds.
# Three cuts keep the wheels and the checkout under the device tool's 64 MiB (59 MB of wheels):
# - MLflow's web UI (mlflow/server/js, about 8 MB) is dropped from its wheel: the run never serves it;
# - SQLAlchemy comes as its pure-Python wheel (2 MB, not 4.7 with its optional C extensions);
# - decord (14 MB) stays behind: the run then decodes with PyAV (python3 -m benchmarks.gpu picks
#   decord when it can import it, else PyAV, and records which).
#
#   bash benchmarks/gpu/wheels.sh [PYTHON_VERSION]     # default 3.12; WHEELS_DIR=... for another folder
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${1:-3.12}"
dest="${WHEELS_DIR:-.whl}"
rm -rf "$dest" && mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux2010_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
packages=(
    av==18.1.0
    mlflow==3.17.2 mlflow-skinny==3.17.2 mlflow-tracing==3.17.2
    alembic==1.20.1 mako==1.4.3 sqlparse==0.6.1
    pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0
    opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2 opentelemetry-semantic-conventions==0.66b2
    cachetools==7.3.3 databricks-sdk==0.162.0 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 importlib-metadata==9.1.0
    fastapi==0.165.0 starlette==1.10.0 annotated-doc==0.0.7 cryptography==50.0.2 cffi==2.1.1
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp "${platforms[@]}" -d "$dest" "${packages[@]}"
# SQLAlchemy's pure-Python wheel: 2 MB against 4.7 MB with its optional C extensions
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation py --abi none --platform any -d "$dest" sqlalchemy==2.1.9
mlflow=$(ls "$dest"/mlflow-3*.whl)
python3 - "$mlflow" <<'EOF'
import sys, zipfile, os
src = sys.argv[1]
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not item.filename.startswith("mlflow/server/js/"):
            zout.writestr(item, zin.read(item.filename))
os.replace(tmp, src)
EOF
du -ch "$dest"/*.whl | tail -1
