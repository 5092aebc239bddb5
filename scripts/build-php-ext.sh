#!/usr/bin/env bash
# Builds the PHP client's extension (clients/php/ext) for the PHP whose php-dev is installed (phpize, php-config:
# Debian's `apt-get install php-dev`) and copies sidekick.so into OUTDIR (default build/php-ext). The build runs in a
# temporary copy, so the source directory stays clean. Its last line of output is the .so's path.
#
#   scripts/build-php-ext.sh [OUTDIR]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/build/php-ext}"
for tool in phpize php-config make cc; do
  command -v "$tool" >/dev/null || { echo "build-php-ext: $tool not found (apt-get install php-dev)" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$root"/clients/php/ext/config.m4 "$root"/clients/php/ext/*.c "$root"/clients/php/ext/*.h "$work/"
(
  cd "$work"
  phpize >/dev/null
  ./configure --quiet >/dev/null
  make --silent >/dev/null
) >&2
mkdir -p "$out"
install -m 0755 "$work/modules/sidekick.so" "$out/sidekick.so"
echo "build-php-ext: PHP $(php-config --version), extension API $(php-config --phpapi)" >&2
echo "$out/sidekick.so"
