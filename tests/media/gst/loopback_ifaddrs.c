/* LD_PRELOAD for the GStreamer test: libnice skips loopback interfaces, so report only the
 * IPv4 loopback address, with IFF_LOOPBACK cleared, and libnice gathers a 127.0.0.1 host
 * candidate. glibc allocates the whole list in one block freed through its head, so the head
 * node is reused for the first entry kept. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stddef.h>

int getifaddrs(struct ifaddrs **result) {
    int (*real)(struct ifaddrs **) = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    int status = real(result);
    if (status != 0 || *result == NULL) return status;
    struct ifaddrs *head = *result, *loopback = NULL;
    for (struct ifaddrs *it = head; it != NULL; it = it->ifa_next) {
        if (it->ifa_addr != NULL && it->ifa_addr->sa_family == AF_INET &&
            ((struct sockaddr_in *)it->ifa_addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK)) {
            loopback = it;
            break;
        }
    }
    if (loopback == NULL) return status;
    if (loopback != head) *head = *loopback;
    head->ifa_next = NULL;
    head->ifa_flags &= ~IFF_LOOPBACK;
    return 0;
}
