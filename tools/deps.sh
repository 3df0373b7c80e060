# Sourced by the tools/ scripts: install missing Debian packages, or say how to.
#
# corr_require_packages PKG...  installs the packages that are missing when run as root (after one
# apt-get update), and otherwise prints the exact apt-get line and returns 1.

corr_missing_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    echo "${missing[@]}"
}

corr_require_packages() {
    local missing
    missing=$(corr_missing_packages "$@")
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "corr: missing Debian packages. Install them with:" >&2
        echo "  sudo apt-get install -y $missing" >&2
        return 1
    fi
    echo "corr: installing Debian packages: $missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || return 1
    # shellcheck disable=SC2086 # the package list is meant to split into words
    apt-get install -y -qq --no-install-recommends $missing >&2
}

# Packages needed to build the engine and corrd.
CORR_BUILD_PACKAGES="cmake make gcc libc6-dev pkg-config libh2o-evloop-dev libssl-dev libck-dev liburcu-dev"
# Extra packages for the test suite: cmocka, libcurl (HTTP/1.1 and HTTP/2), clang for libFuzzer,
# g++ for the C++ header check and haproxy for the scale-out test.
CORR_TEST_PACKAGES="libcmocka-dev libcurl4-openssl-dev libnghttp2-dev curl clang libclang-rt-14-dev g++ haproxy"
