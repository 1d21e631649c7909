/*
 * golive.media._fanout: the per-packet path of forwarding, in C.
 *
 * One call per publisher packet (Fanout.forward) does, for every viewer of the track: the
 * header rewrite that gives the viewer its own continuous stream (SSRC, payload type,
 * sequence number, timestamp; the start on a keyframe), SRTP protection with the session
 * the viewer's DTLS negotiated, and the send on the viewer's nominated socket (sendmmsg,
 * one batch per socket). No crypto is written here: protection is libsrtp's srtp_protect,
 * called through the function pointer and srtp_t that aiortc's pylibsrtp session holds
 * (same keys, same rollover counter), which the caller passes in (Output.bind).
 *
 * The GIL is released while a batch is protected and sent, so actor threads run meanwhile;
 * the objects touched then are this module's own C structs, which only the event loop's
 * thread (the caller) changes.
 *
 * Backpressure: sockets are non-blocking; a viewer whose socket buffer is full loses the
 * packet (counted), nothing is queued.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RTP_HEADER 12
/* libsrtp's SRTP_MAX_TRAILER_LEN: what protection may append (tag and MKI) */
#define SRTP_TRAILER 144
/* A slot holds one protected packet: the largest plain packet forwarded, and its trailer. */
#define SLOT 2048
#define MAX_PACKET (SLOT - SRTP_TRAILER)
/* Viewers protected and sent per batch (and per release of the GIL). */
#define BATCH 64
/* Forward with the GIL released from this many viewers up (below, the release costs more
 * than it gives). */
#define RELEASE_GIL_FROM 8

/* How far (in sequence numbers, either way) a publisher's packet may be from the newest one
 * forwarded and keep its spacing in a viewer's stream: golive.media.rtp.SEQ_CONTINUITY. */
#define SEQ_CONTINUITY 512
/* How far back a NACK may name a packet of the current mapping. */
#define MAPPED_SPAN 0x4000

/* libsrtp 2: srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr) */
typedef int (*protect_fn)(void *ctx, void *header, int *length);

enum delivery { SENT = 0, DROPPED = 1, NOT_READY = 2, FAILED = 3 };

/* -- Output: one viewer's numbering of one track, and where its packets go ----------------- */

typedef struct {
    PyObject_HEAD
    /* numbering */
    uint32_t ssrc;
    uint8_t payload_type;
    uint16_t first_seq;
    uint32_t first_ts;
    uint32_t clock_rate;
    uint16_t seq_offset;
    uint32_t ts_offset;
    int started;
    int resumed;          /* started before: a restart continues the numbering */
    uint32_t source;      /* the publisher's SSRC the mapping is for */
    uint16_t newest;      /* newest sequence number forwarded, the publisher's numbering */
    uint16_t last_seq;    /* newest sequence number sent, the viewer's numbering */
    uint32_t last_ts;     /* its timestamp, the viewer's clock */
    double last_time;     /* when it was forwarded (the caller's clock, seconds) */
    uint16_t mapped_from; /* first sequence number of the current mapping, the viewer's */
    char held;            /* being brought up to live from the keyframe cache: not fanned out */
    /* where packets go: a duplicate of the viewer's socket, so it outlives nothing */
    int fd;
    struct sockaddr_storage address;
    socklen_t address_length;
    void *srtp;
    protect_fn protect;
    PyObject *keepalive; /* what owns srtp (the pylibsrtp session) */
    /* counters */
    unsigned long long packets_sent;
    unsigned long long bytes_sent; /* after the 12-byte header, as RTCP SR octet counts */
    unsigned long long packets_dropped;
    unsigned long long send_errors;
    int last_errno;
} Output;

typedef struct {
    uint16_t seq;
    uint32_t ts;
    uint32_t ssrc;
    Py_ssize_t header; /* fixed header and CSRCs */
    Py_ssize_t payload; /* where the payload starts (after any extension) */
} Header;

static int parse_header(const uint8_t *p, Py_ssize_t n, Header *h)
{
    if (n < RTP_HEADER || (p[0] & 0xC0) != 0x80) {
        PyErr_SetString(PyExc_ValueError, "not an RTP packet");
        return -1;
    }
    h->seq = (uint16_t)((p[2] << 8) | p[3]);
    h->ts = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
    h->ssrc = ((uint32_t)p[8] << 24) | ((uint32_t)p[9] << 16) | ((uint32_t)p[10] << 8) | p[11];
    h->header = RTP_HEADER + 4 * (p[0] & 0x0F);
    h->payload = h->header;
    if (p[0] & 0x10) {
        if (n < h->header + 4) {
            PyErr_SetString(PyExc_ValueError, "truncated RTP header extension");
            return -1;
        }
        h->payload += 4 + 4 * (Py_ssize_t)((p[h->header + 2] << 8) | p[h->header + 3]);
    }
    if (h->payload > n) {
        PyErr_SetString(PyExc_ValueError, "truncated RTP header");
        return -1;
    }
    return 0;
}

/* The clock ticks since the newest packet was forwarded (at least one). */
static uint32_t ticks_since(const Output *o, double now)
{
    double ticks = nearbyint((now - o->last_time) * (double)o->clock_rate);
    return ticks < 1 ? 1 : (ticks > 4294967295.0 ? 0xFFFFFFFFu : (uint32_t)ticks);
}

static void start_mapping(Output *o, const Header *h, double now)
{
    if (o->resumed) { /* restarted (a new publisher): go on right after the newest packet */
        uint32_t step = ticks_since(o, now);
        o->seq_offset = (uint16_t)(o->last_seq + 1 - h->seq);
        o->ts_offset = o->last_ts + step - h->ts;
        o->source = h->ssrc;
        o->newest = h->seq;
        o->last_seq = o->mapped_from = (uint16_t)(o->last_seq + 1);
        o->last_ts += step;
        o->last_time = now;
        o->started = 1;
        return;
    }
    o->seq_offset = (uint16_t)(o->first_seq - h->seq);
    o->ts_offset = o->first_ts - h->ts;
    o->source = h->ssrc;
    o->newest = h->seq;
    o->last_seq = o->mapped_from = o->first_seq;
    o->last_ts = o->first_ts;
    o->last_time = now;
    o->started = 1;
}

/* Move the mapping on by a packet about to be forwarded (golive.media.rtp documents it). */
static void advance_mapping(Output *o, const Header *h, double now)
{
    uint16_t ahead = (uint16_t)(h->seq - o->newest);
    if (h->ssrc != o->source || (SEQ_CONTINUITY < ahead && ahead < 0x10000 - SEQ_CONTINUITY)) {
        /* a discontinuity: go on right after the newest packet, the clock by the time since */
        uint32_t step = ticks_since(o, now);
        o->seq_offset = (uint16_t)(o->last_seq + 1 - h->seq);
        o->ts_offset = o->last_ts + step - h->ts;
        o->source = h->ssrc;
        o->mapped_from = (uint16_t)(o->last_seq + 1);
        ahead = 1;
    }
    if (0 < ahead && ahead < 0x8000) { /* the newest yet (else late, perhaps resent) */
        o->newest = h->seq;
        o->last_seq = (uint16_t)(h->seq + o->seq_offset);
        o->last_ts = h->ts + o->ts_offset;
        o->last_time = now;
        if ((uint16_t)(o->last_seq - o->mapped_from) > MAPPED_SPAN)
            o->mapped_from = (uint16_t)(o->last_seq - MAPPED_SPAN);
    }
}

/* Write the packet as this viewer receives it into out (room for MAX_PACKET): the header
 * renumbered, without the publisher's header extension (its ids were negotiated with the
 * publisher, not with this viewer). Returns its length. */
static Py_ssize_t renumbered(const Output *o, const uint8_t *p, Py_ssize_t n, const Header *h,
                             uint8_t *out)
{
    Py_ssize_t length = h->header + (n - h->payload);
    uint16_t seq = (uint16_t)(h->seq + o->seq_offset);
    uint32_t ts = h->ts + o->ts_offset;
    memcpy(out, p, (size_t)h->header);
    memcpy(out + h->header, p + h->payload, (size_t)(n - h->payload));
    out[0] &= 0xEF;
    out[1] = (uint8_t)((p[1] & 0x80) | o->payload_type);
    out[2] = (uint8_t)(seq >> 8);
    out[3] = (uint8_t)seq;
    out[4] = (uint8_t)(ts >> 24);
    out[5] = (uint8_t)(ts >> 16);
    out[6] = (uint8_t)(ts >> 8);
    out[7] = (uint8_t)ts;
    out[8] = (uint8_t)(o->ssrc >> 24);
    out[9] = (uint8_t)(o->ssrc >> 16);
    out[10] = (uint8_t)(o->ssrc >> 8);
    out[11] = (uint8_t)o->ssrc;
    return length;
}

static void release_socket(Output *o)
{
    if (o->fd >= 0) {
        close(o->fd);
        o->fd = -1;
    }
    o->srtp = NULL;
    o->protect = NULL;
    Py_CLEAR(o->keepalive);
}

/* Count the outcome of sending one packet to o (errno as sendmmsg left it on failure). */
static enum delivery account(Output *o, int sent, Py_ssize_t length, int error)
{
    if (sent) {
        o->packets_sent++;
        o->bytes_sent += (unsigned long long)(length - RTP_HEADER);
        return SENT;
    }
    if (error == EAGAIN || error == EWOULDBLOCK || error == ENOBUFS) {
        o->packets_dropped++;
        return DROPPED;
    }
    o->send_errors++;
    o->last_errno = error;
    return FAILED;
}

static int Output_init(Output *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"ssrc", "payload_type", "first_seq", "first_ts", "clock_rate",
                               NULL};
    unsigned long ssrc, first_ts, clock_rate = 90000;
    int payload_type, first_seq;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "kiik|k", keywords, &ssrc, &payload_type,
                                     &first_seq, &first_ts, &clock_rate))
        return -1;
    if (ssrc > 0xFFFFFFFFul || first_ts > 0xFFFFFFFFul || payload_type < 0 ||
        payload_type > 127 || first_seq < 0 || first_seq > 0xFFFF || clock_rate == 0 ||
        clock_rate > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_ValueError, "ssrc, payload type, sequence or clock out of range");
        return -1;
    }
    release_socket(self);
    memset((char *)self + offsetof(Output, ssrc), 0, offsetof(Output, fd) - offsetof(Output, ssrc));
    self->ssrc = (uint32_t)ssrc;
    self->payload_type = (uint8_t)payload_type;
    self->first_seq = (uint16_t)first_seq;
    self->first_ts = (uint32_t)first_ts;
    self->clock_rate = (uint32_t)clock_rate;
    return 0;
}

static PyObject *Output_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    Output *self = (Output *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->fd = -1;
    return (PyObject *)self;
}

static void Output_dealloc(Output *self)
{
    release_socket(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int get_packet(PyObject *arg, Py_buffer *view, Header *h)
{
    if (PyObject_GetBuffer(arg, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (parse_header((const uint8_t *)view->buf, view->len, h) < 0) {
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static char *packet_now[] = {"", "now", NULL};
static char *packet_only[] = {"", NULL};

static PyObject *Output_start(Output *self, PyObject *args, PyObject *kwargs)
{
    Py_buffer view;
    Header h;
    PyObject *packet;
    double now = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|d", packet_now, &packet, &now) ||
        get_packet(packet, &view, &h) < 0)
        return NULL;
    start_mapping(self, &h, now);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *rewritten(Output *self, PyObject *args, PyObject *kwargs, int advance)
{
    Py_buffer view;
    Header h;
    PyObject *packet, *result;
    double now = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, advance ? "O|d" : "O",
                                     advance ? packet_now : packet_only, &packet, &now) ||
        get_packet(packet, &view, &h) < 0)
        return NULL;
    if (view.len > MAX_PACKET) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "packet is too long (%zd bytes)", view.len);
    }
    if (advance)
        advance_mapping(self, &h, now);
    result = PyBytes_FromStringAndSize(NULL, h.header + (view.len - h.payload));
    if (result != NULL)
        renumbered(self, view.buf, view.len, &h, (uint8_t *)PyBytes_AS_STRING(result));
    PyBuffer_Release(&view);
    return result;
}

static PyObject *Output_rewrite(Output *self, PyObject *args, PyObject *kwargs)
{
    return rewritten(self, args, kwargs, 1);
}

static PyObject *Output_renumber(Output *self, PyObject *args, PyObject *kwargs)
{
    return rewritten(self, args, kwargs, 0);
}

static PyObject *Output_publisher_seq(Output *self, PyObject *arg)
{
    long viewer_seq = PyLong_AsLong(arg);
    if (viewer_seq == -1 && PyErr_Occurred())
        return NULL;
    if ((uint16_t)(self->last_seq - (uint16_t)viewer_seq) >
        (uint16_t)(self->last_seq - self->mapped_from))
        Py_RETURN_NONE;
    return PyLong_FromLong((uint16_t)((uint16_t)viewer_seq - self->seq_offset));
}

static PyObject *Output_follows(Output *self, PyObject *packet)
{
    Py_buffer view;
    Header h;
    if (get_packet(packet, &view, &h) < 0)
        return NULL;
    PyBuffer_Release(&view);
    return PyBool_FromLong(h.ssrc == self->source);
}

static PyObject *Output_bind(Output *self, PyObject *args)
{
    int fd, port, copy;
    const char *host;
    unsigned long long srtp, protect;
    PyObject *keepalive;
    struct sockaddr_storage address;
    socklen_t length;
    if (!PyArg_ParseTuple(args, "i(si)KKO", &fd, &host, &port, &srtp, &protect, &keepalive))
        return NULL;
    if (srtp == 0 || protect == 0 || port <= 0 || port > 0xFFFF)
        return PyErr_Format(PyExc_ValueError, "bad SRTP session, function or port");
    memset(&address, 0, sizeof address);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&address;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        length = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        length = sizeof *v6;
    } else {
        return PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    }
    copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    release_socket(self);
    self->fd = copy;
    self->address = address;
    self->address_length = length;
    self->srtp = (void *)(uintptr_t)srtp;
    self->protect = (protect_fn)(uintptr_t)protect;
    Py_INCREF(keepalive);
    self->keepalive = keepalive;
    Py_RETURN_NONE;
}

static PyObject *Output_restart(Output *self, PyObject *Py_UNUSED(ignored))
{
    if (self->started) {
        self->started = 0;
        self->resumed = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *Output_unbind(Output *self, PyObject *Py_UNUSED(ignored))
{
    release_socket(self);
    Py_RETURN_NONE;
}

/* Protect the plain packet in slot (length bytes, room for the trailer) and send it now, on its
 * own; counted in packets_sent if counted. */
static enum delivery send_now(Output *o, uint8_t *slot, int length, int counted)
{
    int plain = length;
    if (o->fd < 0)
        return NOT_READY;
    if (o->protect(o->srtp, slot, &length) != 0) {
        o->send_errors++;
        return FAILED;
    }
    if (sendto(o->fd, slot, (size_t)length, MSG_DONTWAIT, (struct sockaddr *)&o->address,
               o->address_length) >= 0)
        return counted ? account(o, 1, plain, 0) : SENT;
    return account(o, 0, plain, errno);
}

/* Protect and send one packet (already in this viewer's numbering) now: a retransmission. */
static PyObject *Output_send(Output *self, PyObject *packet)
{
    Py_buffer view;
    uint8_t slot[SLOT];
    int length;
    if (PyObject_GetBuffer(packet, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len > MAX_PACKET || view.len < RTP_HEADER) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "cannot send a packet of %zd bytes", view.len);
    }
    memcpy(slot, view.buf, (size_t)view.len);
    length = (int)view.len;
    PyBuffer_Release(&view);
    /* not in packets_sent: a resend, perhaps of another SSRC */
    return PyLong_FromLong(send_now(self, slot, length, 0));
}

/* Send one packet of the keyframe cache to a viewer being brought up to live: numbered on
 * from the last one sent (a rebase jumps a gap: the numbering goes on right after it), each new
 * frame timed when it is sent, so the cached frames, sent faster than real time, play at once
 * rather than behind. The mapping left when the cache is done is the one live packets follow. */
static PyObject *Output_catch_up(Output *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"", "now", "rebase", NULL};
    Py_buffer view;
    Header h;
    PyObject *packet;
    double now;
    int rebase = 0, length;
    uint8_t slot[SLOT];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Od|p", keywords, &packet, &now, &rebase) ||
        get_packet(packet, &view, &h) < 0)
        return NULL;
    if (view.len > MAX_PACKET) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "packet is too long (%zd bytes)", view.len);
    }
    if (!self->started) {
        start_mapping(self, &h, now);
    } else {
        if (rebase) {
            self->seq_offset = (uint16_t)(self->last_seq + 1 - h.seq);
            self->newest = (uint16_t)(h.seq - 1);
            self->source = h.ssrc;
            self->mapped_from = (uint16_t)(self->last_seq + 1);
        }
        uint16_t ahead = (uint16_t)(h.seq - self->newest);
        if (h.ssrc == self->source && 0 < ahead && ahead < 0x8000 &&
            (rebase || h.ts + self->ts_offset != self->last_ts))
            self->ts_offset = self->last_ts + ticks_since(self, now) - h.ts;
        advance_mapping(self, &h, now);
    }
    length = (int)renumbered(self, view.buf, view.len, &h, slot);
    PyBuffer_Release(&view);
    return PyLong_FromLong(send_now(self, slot, length, 1));
}

static PyObject *Output_get_bound(Output *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->fd >= 0);
}

static PyMethodDef Output_methods[] = {
    {"start", (PyCFunction)(void (*)(void))Output_start, METH_VARARGS | METH_KEYWORDS,
     "start(packet, now=0.0): map the viewer's first packet to first_seq/first_ts."},
    {"rewrite", (PyCFunction)(void (*)(void))Output_rewrite, METH_VARARGS | METH_KEYWORDS,
     "rewrite(packet, now=0.0) -> bytes: the packet as this viewer receives it, the mapping "
     "moved on (re-based on a discontinuity)."},
    {"renumber", (PyCFunction)(void (*)(void))Output_renumber, METH_VARARGS | METH_KEYWORDS,
     "renumber(packet) -> bytes: rewrite by the current mapping, changing nothing."},
    {"publisher_seq", (PyCFunction)Output_publisher_seq, METH_O,
     "publisher_seq(viewer_seq) -> int | None: the publisher's number of a packet this viewer "
     "knows as viewer_seq, or None if the current mapping did not number it."},
    {"follows", (PyCFunction)Output_follows, METH_O,
     "follows(packet) -> bool: whether packet is of the publisher's SSRC being mapped."},
    {"bind", (PyCFunction)Output_bind, METH_VARARGS,
     "bind(fd, (host, port), srtp, protect, keepalive): send to (host, port) on a duplicate of "
     "fd, protected by srtp_protect at address protect with the srtp_t at srtp, which "
     "keepalive owns."},
    {"restart", (PyCFunction)Output_restart, METH_NOARGS,
     "restart(): wait for a keyframe again (a new publisher), then go on with the numbering "
     "right after the newest packet sent, the clock by the time since."},
    {"unbind", (PyCFunction)Output_unbind, METH_NOARGS,
     "unbind(): send nothing more (closes the duplicate socket)."},
    {"catch_up", (PyCFunction)(void (*)(void))Output_catch_up, METH_VARARGS | METH_KEYWORDS,
     "catch_up(packet, now, rebase=False) -> int: send a packet of the keyframe cache to this "
     "(held) viewer, numbered on from the last one sent (rebase: right after it, across a gap "
     "of skipped frames), each new frame timed at now; starts the output on its first "
     "packet. 0 sent, 1 dropped (socket full), 2 not bound, 3 failed."},
    {"send", (PyCFunction)Output_send, METH_O,
     "send(packet) -> int: protect and send a packet in this viewer's numbering; 0 sent, "
     "1 dropped (socket full), 2 not bound, 3 failed."},
    {NULL},
};

#define RO(name, type, field) {name, type, offsetof(Output, field), READONLY, NULL}
static PyMemberDef Output_members[] = {
    RO("ssrc", T_UINT, ssrc),
    RO("payload_type", T_UBYTE, payload_type),
    RO("first_seq", T_USHORT, first_seq),
    RO("first_ts", T_UINT, first_ts),
    RO("clock_rate", T_UINT, clock_rate),
    RO("seq_offset", T_USHORT, seq_offset),
    RO("ts_offset", T_UINT, ts_offset),
    {"started", T_BOOL, offsetof(Output, started), READONLY, NULL},
    RO("source", T_UINT, source),
    RO("newest", T_USHORT, newest),
    RO("last_seq", T_USHORT, last_seq),
    RO("last_ts", T_UINT, last_ts),
    RO("last_time", T_DOUBLE, last_time),
    RO("mapped_from", T_USHORT, mapped_from),
    {"held", T_BOOL, offsetof(Output, held), 0,
     "Being brought up to live from the keyframe cache (catch_up): the fan-out skips it."},
    RO("packets_sent", T_ULONGLONG, packets_sent),
    RO("bytes_sent", T_ULONGLONG, bytes_sent),
    RO("packets_dropped", T_ULONGLONG, packets_dropped),
    RO("send_errors", T_ULONGLONG, send_errors),
    RO("last_errno", T_INT, last_errno),
    {NULL},
};

static PyGetSetDef Output_getset[] = {
    {"bound", (getter)Output_get_bound, NULL, "Whether packets have somewhere to go.", NULL},
    {NULL},
};

static PyTypeObject OutputType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "golive.media._fanout.Output",
    .tp_doc = "One viewer's output of one track: its numbering (SSRC, payload type, sequence "
              "numbers, timestamps) and, once bound, its socket and SRTP session.",
    .tp_basicsize = sizeof(Output),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Output_new,
    .tp_init = (initproc)Output_init,
    .tp_dealloc = (destructor)Output_dealloc,
    .tp_methods = Output_methods,
    .tp_members = Output_members,
    .tp_getset = Output_getset,
};

/* -- Fanout: one published track's packets to all its viewers ----------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *outputs; /* a tuple of Output: who receives the track now */
    uint8_t *slots;    /* BATCH protected packets */
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    Output *batch[BATCH];
    int plain[BATCH]; /* each packet's length before protection */
} Fanout;

typedef struct {
    Py_ssize_t sent, sent_bytes, dropped, failed;
} Tally;

static void tally(Tally *t, Output *o, int sent, Py_ssize_t length, int error)
{
    switch (account(o, sent, length, error)) {
    case SENT:
        t->sent++;
        t->sent_bytes += length - RTP_HEADER;
        break;
    case DROPPED:
        t->dropped++;
        break;
    default:
        t->failed++;
    }
}

/* Send the batch's count packets: one sendmmsg per run of packets on the same socket. */
static void flush(Fanout *self, int count, Tally *t)
{
    int first = 0;
    while (first < count) {
        int fd = self->batch[first]->fd, end = first + 1;
        while (end < count && self->batch[end]->fd == fd)
            end++;
        while (first < end) {
            int done = sendmmsg(fd, &self->messages[first], (unsigned)(end - first), MSG_DONTWAIT);
            if (done < 0) { /* the first of them failed: count it, go on with the next */
                int error = errno;
                tally(t, self->batch[first], 0, self->plain[first], error);
                first++;
                continue;
            }
            for (int i = first; i < first + done; i++)
                tally(t, self->batch[i], 1, self->plain[i], 0);
            first += done;
        }
    }
}

/* Rewrite, protect and send one packet to every started, bound output in outputs, counting
 * in t. Touches no Python object but through the C structs: may run without the GIL. */
static void fan_out(Fanout *self, PyObject *outputs, const uint8_t *packet, Py_ssize_t length,
                    const Header *h, double now, Tally *t)
{
    Py_ssize_t n = PyTuple_GET_SIZE(outputs);
    int count = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Output *o = (Output *)PyTuple_GET_ITEM(outputs, i);
        if (!o->started || o->fd < 0 || o->held)
            continue;
        advance_mapping(o, h, now);
        uint8_t *slot = self->slots + (size_t)count * SLOT;
        int plain = (int)renumbered(o, packet, length, h, slot), protected_length = plain;
        if (o->protect(o->srtp, slot, &protected_length) != 0) {
            o->send_errors++;
            t->failed++;
            continue;
        }
        self->vectors[count].iov_base = slot;
        self->vectors[count].iov_len = (size_t)protected_length;
        struct msghdr *m = &self->messages[count].msg_hdr;
        memset(m, 0, sizeof *m);
        m->msg_name = &o->address;
        m->msg_namelen = o->address_length;
        m->msg_iov = &self->vectors[count];
        m->msg_iovlen = 1;
        self->plain[count] = plain;
        self->batch[count++] = o;
        if (count == BATCH) {
            flush(self, count, t);
            count = 0;
        }
    }
    if (count)
        flush(self, count, t);
}

static PyObject *Fanout_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    Fanout *self = (Fanout *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->slots = PyMem_RawMalloc((size_t)BATCH * SLOT);
    if (self->slots == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->outputs = PyTuple_New(0);
    if (self->outputs == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Fanout_dealloc(Fanout *self)
{
    Py_CLEAR(self->outputs);
    PyMem_RawFree(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Fanout_get_outputs(Fanout *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->outputs);
}

static int Fanout_set_outputs(Fanout *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || !PyTuple_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "outputs must be a tuple of Output");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(value); i++) {
        if (!PyObject_TypeCheck(PyTuple_GET_ITEM(value, i), &OutputType)) {
            PyErr_SetString(PyExc_TypeError, "outputs must be a tuple of Output");
            return -1;
        }
    }
    Py_SETREF(self->outputs, Py_NewRef(value));
    return 0;
}

/* forward(packet, keyframe, now) -> (sent, sent_bytes, dropped, failed, waiting, started) */
static PyObject *Fanout_forward(Fanout *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Header h;
    Tally t = {0, 0, 0, 0};
    Py_ssize_t waiting = 0, sending = 0;
    PyObject *started = Py_None, *outputs, *result;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "forward(packet, keyframe, now)");
        return NULL;
    }
    int keyframe = PyObject_IsTrue(args[1]);
    double now = PyFloat_AsDouble(args[2]);
    if (keyframe < 0 || (now == -1.0 && PyErr_Occurred()) ||
        get_packet(args[0], &view, &h) < 0)
        return NULL;
    if (view.len > MAX_PACKET) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "packet is too long (%zd bytes)", view.len);
    }
    outputs = Py_NewRef(self->outputs);
    Py_INCREF(started);
    /* who starts on this packet (with the GIL: the list is a Python object) */
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(outputs); i++) {
        Output *o = (Output *)PyTuple_GET_ITEM(outputs, i);
        if (o->fd < 0 || o->held)
            continue;
        if (!o->started) {
            if (!keyframe) {
                waiting++;
                continue;
            }
            start_mapping(o, &h, now);
            if (started == Py_None) {
                Py_SETREF(started, PyList_New(0));
                if (started == NULL)
                    goto error;
            }
            if (PyList_Append(started, (PyObject *)o) < 0)
                goto error;
        }
        sending++;
    }
    if (sending >= RELEASE_GIL_FROM) {
        Py_BEGIN_ALLOW_THREADS
        fan_out(self, outputs, view.buf, view.len, &h, now, &t);
        Py_END_ALLOW_THREADS
    } else if (sending) {
        fan_out(self, outputs, view.buf, view.len, &h, now, &t);
    }
    result = Py_BuildValue("nnnnnO", t.sent, t.sent_bytes, t.dropped, t.failed, waiting, started);
    Py_DECREF(started);
    Py_DECREF(outputs);
    PyBuffer_Release(&view);
    return result;
error:
    Py_XDECREF(started);
    Py_DECREF(outputs);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef Fanout_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Fanout_forward, METH_FASTCALL,
     "forward(packet, keyframe, now) -> (sent, sent_bytes, dropped, failed, waiting, started):\n"
     "send a publisher's packet to every bound output. An output not started yet starts on it\n"
     "if keyframe is true (it is returned in the list started; None when none did), else it\n"
     "is counted in waiting. sent_bytes counts what follows the 12-byte headers."},
    {NULL},
};

static PyGetSetDef Fanout_getset[] = {
    {"outputs", (getter)Fanout_get_outputs, (setter)Fanout_set_outputs,
     "The outputs a packet goes to, in order (a tuple of Output).", NULL},
    {NULL},
};

static PyTypeObject FanoutType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "golive.media._fanout.Fanout",
    .tp_doc = "One published track's fan-out: its packets to each of its outputs.",
    .tp_basicsize = sizeof(Fanout),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Fanout_new,
    .tp_dealloc = (destructor)Fanout_dealloc,
    .tp_methods = Fanout_methods,
    .tp_getset = Fanout_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "golive.media._fanout",
    .m_doc = "The per-packet path of forwarding: header rewrite, SRTP protection (libsrtp, "
             "through pylibsrtp's session) and batched sends, for all viewers of a track.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fanout(void)
{
    PyObject *m;
    if (PyType_Ready(&OutputType) < 0 || PyType_Ready(&FanoutType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Output", (PyObject *)&OutputType) < 0 ||
        PyModule_AddObjectRef(m, "Fanout", (PyObject *)&FanoutType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PACKET", MAX_PACKET) < 0 ||
        PyModule_AddIntConstant(m, "SEQ_CONTINUITY", SEQ_CONTINUITY) < 0 ||
        PyModule_AddIntConstant(m, "SENT", SENT) < 0 ||
        PyModule_AddIntConstant(m, "DROPPED", DROPPED) < 0 ||
        PyModule_AddIntConstant(m, "NOT_READY", NOT_READY) < 0 ||
        PyModule_AddIntConstant(m, "FAILED", FAILED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
