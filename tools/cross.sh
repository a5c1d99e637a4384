#!/bin/sh
# make cross ARCH=arm64|armhf, after the build: what the binaries are
# (file, size), their unit tests under qemu-user, and end-to-end flows of
# the integration suite with the ARM lockerd under qemu-user against the
# native locksim and mosquitto (build/). Times each part.
#
#   tools/cross.sh ARCH
set -eu

arch=$1
case "$arch" in
arm64) triplet=aarch64-linux-gnu qemu=qemu-aarch64 ;;
armhf) triplet=arm-linux-gnueabihf qemu=qemu-arm ;;
*) echo "tools/cross.sh: ARCH is arm64 or armhf" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
b=build-$arch
py=${PYTHON:-/usr/bin/python3}
# What the emulated run takes: the power-loss sweep's smallest size (one
# loss pattern per cut point instead of 3; emulation is 10-20 times slower).
E2E=${CROSS_E2E:-test_flow_dropoff test_flow_pickup test_flow_staff_retrieval}

echo "== $arch: the binaries"
for f in lockerd locksim kiosk; do
	echo "$b/$f: $(file -b $b/$f)"
done
s=$(mktemp -d)
for f in lockerd locksim kiosk; do
	$triplet-strip -o "$s/$f" "$b/$f"
	echo "$f: $($triplet-size "$b/$f" | awk 'NR == 2 { print "text " $1 ", data " $2 ", bss " $3 }'), stripped $(stat -c %s "$s/$f") bytes"
done
rm -rf "$s"

echo "== $arch: unit tests under $qemu"
t0=$(date +%s)
UNIT_WRAPPER=$qemu POWERLOSS_SEEDS=${POWERLOSS_SEEDS:-1} UNIT_TIMEOUT=${UNIT_TIMEOUT:-900} \
	$py tests/run.py --build $b --unit-only $b/test_*
t1=$(date +%s)
echo "cross $arch: unit tests under $qemu took $((t1 - t0)) s"

echo "== $arch: end to end, $b/lockerd under $qemu, build/locksim and mosquitto native"
# A build folder for the harness whose lockerd is the ARM one.
w=$b/e2e
rm -rf "$w"
mkdir -p "$w"
printf '#!/bin/sh\nexec %s %s "$@"\n' "$qemu" "$(pwd)/$b/lockerd" > "$w/lockerd"
chmod +x "$w/lockerd"
for f in locksim kiosk mbping libslowsync.so; do
	ln -s "$(pwd)/build/$f" "$w/$f"
done
"$w/lockerd" --version
set --
for t in $E2E; do set -- "$@" -k "$t"; done
t0=$(date +%s)
$py tests/run.py --build $w "$@"
t1=$(date +%s)
echo "cross $arch: end to end under $qemu took $((t1 - t0)) s"
