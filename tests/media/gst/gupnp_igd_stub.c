/* A stand-in for libgupnp-igd-1.0.so.4, loaded first through LD_LIBRARY_PATH by the GStreamer
 * test. Debian's whip-client links libsoup 2.4 while libnice pulls libsoup 3 through
 * libgupnp-igd, and the process aborts ("libsoup2 symbols detected"). With this stub libsoup 3
 * never loads; libnice carries on without UPnP, which means nothing on loopback. */
#include <stddef.h>

unsigned long gupnp_simple_igd_get_type(void) { return 0; }
void *gupnp_simple_igd_thread_new(void) { return NULL; }
void gupnp_simple_igd_add_port(void) {}
void gupnp_simple_igd_remove_port_local(void) {}
