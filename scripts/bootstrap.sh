# Sourced by scripts/demo and scripts/test: system packages and the project's virtualenv.
# Usage: otpgate_bootstrap "debian packages..."   (sets OTPGATE_VENV)

otpgate_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages: ${missing[*]}" >&2
    # Keep the packages' own daemons (slapd, samba, freeradius) from starting on 389/636/1812:
    # the tests start throwaway servers of their own on loopback.
    local policy=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy" && created=1
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    [ -n "$created" ] && $sudo rm -f "$policy"
    return 0
}

otpgate_venv() {
    OTPGATE_VENV="${OTPGATE_VENV:-$PWD/.venv}"
    if [ ! -x "$OTPGATE_VENV/bin/python" ]; then
        python3 -m venv "$OTPGATE_VENV"
    fi
    "$OTPGATE_VENV/bin/pip" install -q --disable-pip-version-check "$@"
}
