#!/bin/sh
# /usr/bin/sidekick from the Debian package sidekick-agent: the CLI on the Node runtime the package carries (the
# host's own node, if any, is not used). packaging/deb/sidekick.sh in the repository.
exec /usr/lib/sidekick-agent/node /usr/lib/sidekick-agent/bin/sidekick.js "$@"
