// Compiles <fluxus.h> as C++ (-Wall -Wextra -pedantic -Werror, set in tests/meson.build): the
// header must sit in extern "C" and use nothing a C++ compiler rejects. The version check proves
// the C symbols link from C++ without name mangling.
#include <fluxus.h>

static_assert(sizeof(fluxus_pipeline_stats) % 8 == 0, "stats structs are 8-byte aligned");

int main() {
    fluxus_pipeline_stats ps = {};
    ps.struct_size = static_cast<uint32_t>(sizeof ps);
    (void)ps;
    return fluxus_version_number() == FLUXUS_VERSION_NUMBER ? 0 : 1;
}
