#!/bin/sh
# The image's entry point. A state volume without artstore.json gets one that publishes
# into the /srv/artstore volume; ARTSTORE_* variables override any setting in it.
set -eu
config="${ARTSTORE_CONFIG:-/etc/artstore/artstore.json}"
if [ ! -e "$config" ]; then
    printf '{"base_path": "/srv/artstore/public", "temp_path": "/srv/artstore/tmp"}\n' \
        > "$config"
fi
exec "$@"
