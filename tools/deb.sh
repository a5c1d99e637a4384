#!/bin/sh
# make deb: the Debian packages of this tree (debian/), built with
# dpkg-buildpackage -us -uc -b in a copy of the source under OUT, so that
# nothing lands beside the source tree. ARCH (arm64, armhf) cross-builds
# with Debian's cross compilers (make deps-cross). The .deb files end up
# in OUT; their contents and `file` of each binary are printed.
#
#   tools/deb.sh OUT [ARCH]
set -eu

out=$1
arch=${2:-}
top=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$arch" ] || arch=$(dpkg --print-architecture)
case "$out" in /*) ;; *) out=$top/$out ;; esac

version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
src=$out/src-$arch/lockerd-$version
rm -rf "$out/src-$arch"
mkdir -p "$src"
# The source as git has it (tracked and new files, not ignored ones), or,
# outside a clone, everything but the build folders.
if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
	(cd "$top" && git ls-files -z -c -o --exclude-standard) |
		(cd "$top" && xargs -0 tar -c --no-recursion -f - 2>/dev/null) |
		tar -x -C "$src"
else
	tar -c -C "$top" --exclude='./build*' --exclude=./.git . | tar -x -C "$src"
fi

set -- -us -uc -b
# Cross: the unit tests cannot run on this machine's CPU here (make cross
# runs them under qemu-user), so the nocheck profile and option.
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
	set -- "$@" "-a$arch" -Pcross,nocheck
	DEB_BUILD_OPTIONS="nocheck ${DEB_BUILD_OPTIONS:-}"
	export DEB_BUILD_OPTIONS
fi
t0=$(date +%s)
(cd "$src" && dpkg-buildpackage "$@") > "$out/build-$arch.log" 2>&1 || {
	tail -40 "$out/build-$arch.log" >&2
	echo "make deb: dpkg-buildpackage failed; the log is $out/build-$arch.log" >&2
	exit 1
}
t1=$(date +%s)
mv "$out/src-$arch"/*.deb "$out/src-$arch"/*.changes "$out/src-$arch"/*.buildinfo "$out/"
rm -rf "$out/src-$arch"
echo "make deb: $arch packages in $out ($((t1 - t0)) s):"
for d in "$out"/*_"$version"_"$arch".deb; do
	echo "  $(basename "$d") $(stat -c %s "$d") bytes"
done
x=$(mktemp -d)
for d in "$out"/*_"$version"_"$arch".deb; do
	dpkg-deb -x "$d" "$x"
done
for b in "$x"/usr/sbin/* "$x"/usr/bin/*; do
	echo "  $(file -b "$b" | cut -d, -f1-2) : ${b#"$x"}"
done
rm -rf "$x"
