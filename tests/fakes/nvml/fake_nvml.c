/*
 * A fake NVIDIA Management Library (libnvidia-ml.so.1) for tests on machines without a GPU.
 *
 * It implements, with the real C signatures and return codes, the entry points that nvidia-ml-py
 * (`import pynvml`) calls for the NVML collector and the power/clock actuators, so the Python side
 * runs unmodified: pynvml dlopen()s this file exactly as it would the driver's library. State comes
 * from a small text file named by $FAKE_NVML_STATE (see README.md beside this file); the file is read
 * at nvmlInit and re-read whenever it changes, so a test can change a GPU between two reads.
 *
 * Defaults are an H100 SXM (BRIEF.md): power limit default = max 700 W, min 200 W; SM 1980 MHz.
 *
 * Build: gcc -shared -fPIC -O2 -Wall -Wextra -Wl,-soname,libnvidia-ml.so.1 -o libnvidia-ml.so.1 fake_nvml.c -lpthread
 * Define FAKE_NVML_NO_CLOCKS_EVENT_REASONS to leave out nvmlDeviceGetCurrentClocksEventReasons, as in
 * drivers older than R535 (only nvmlDeviceGetCurrentClocksThrottleReasons there).
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_INSUFFICIENT_POWER = 8,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_IRQ_ISSUE = 11,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_CORRUPTED_INFOROM = 14,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_OPERATING_SYSTEM = 17,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_NOT_READY = 27,
    NVML_ERROR_GPU_NOT_FOUND = 28,
    NVML_ERROR_UNKNOWN = 999,
};

/* nvmlClockType_t */
enum { NVML_CLOCK_GRAPHICS = 0, NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2, NVML_CLOCK_VIDEO = 3 };
/* nvmlTemperatureSensors_t */
enum { NVML_TEMPERATURE_GPU = 0 };
#define NVML_TEMPERATURE_V1 0x100000Cu /* nvmlTemperature_v1: sizeof 12 | 1 << 24 */

typedef struct nvmlDevice_st { unsigned int index; } *nvmlDevice_t;
typedef struct { unsigned int gpu; unsigned int memory; } nvmlUtilization_t;
typedef struct { unsigned int version; unsigned int sensorType; int temperature; } nvmlTemperature_v1_t;
/* Power smoothing (Blackwell and newer): the structs' version is NVML_STRUCT_VERSION(sizeof, 1). */
typedef struct { unsigned int version; unsigned int profileId; unsigned int paramId; double value; }
    nvmlPowerSmoothingProfile_v1_t;
typedef struct { unsigned int version; unsigned int state; } nvmlPowerSmoothingState_v1_t;
#define NVML_POWER_SMOOTHING_PROFILE_V1 (0x1000000u | (unsigned int)sizeof(nvmlPowerSmoothingProfile_v1_t))
#define NVML_POWER_SMOOTHING_STATE_V1 (0x1000000u | (unsigned int)sizeof(nvmlPowerSmoothingState_v1_t))
#define NVML_POWER_SMOOTHING_MAX_NUM_PROFILES 5
#define NVML_POWER_SMOOTHING_NUM_PROFILE_PARAMS 8
#define NVML_POWER_SMOOTHING_PROFILE_PARAM_PERCENT_TMP_FLOOR 0

/* ---- state ---------------------------------------------------------------------------------- */

#define MAX_GPUS 64

/* Functions an error can be injected into, as `gpuN.<name>=ERR_...` in the state file. */
enum fn_id {
    FN_HANDLE, FN_NAME, FN_UUID, FN_POWER, FN_ENFORCED_LIMIT, FN_LIMIT, FN_CONSTRAINTS, FN_DEFAULT_LIMIT,
    FN_SET_LIMIT, FN_TEMP, FN_CLOCK_GRAPHICS, FN_CLOCK_SM, FN_CLOCK_MEM, FN_CLOCK_VIDEO, FN_UTIL, FN_REASONS,
    FN_ENERGY, FN_SET_LOCKED_CLOCKS, FN_RESET_LOCKED_CLOCKS, FN_MAX_CLOCK, FN_SUPPORTED_CLOCKS, FN_SMOOTHING,
    FN_COUNT
};
static const char *const FN_NAMES[FN_COUNT] = {
    "handle", "name", "uuid", "power", "enforced_limit", "limit", "constraints", "default_limit",
    "set_limit", "temp", "clock_graphics", "clock_sm", "clock_mem", "clock_video", "util", "reasons",
    "energy", "set_locked_clocks", "reset_locked_clocks", "max_clock", "supported_clocks", "smoothing",
};

struct gpu {
    char name[96];
    char uuid[96];
    unsigned int power_mw;
    unsigned int limit_mw;         /* requested (power management) limit */
    unsigned int default_limit_mw;
    unsigned int min_limit_mw;
    unsigned int max_limit_mw;
    unsigned int ext_limit_mw;     /* a limit imposed from elsewhere (e.g. out of band); enforced = min */
    unsigned int temp_c;
    unsigned int clock_mhz[4];     /* graphics, sm, mem, video */
    unsigned int util_gpu, util_mem;
    unsigned long long reasons;
    unsigned long long energy_mj;
    unsigned int locked_min_mhz, locked_max_mhz; /* 0 = not locked */
    unsigned int min_sm_clock_mhz, max_sm_clock_mhz, clock_step_mhz; /* supported graphics clocks */
    int smoothing_supported;       /* 0: NOT_SUPPORTED from the power smoothing calls (H100) */
    unsigned int smoothing_on, smoothing_profile;
    double floor_pct[NVML_POWER_SMOOTHING_MAX_NUM_PROFILES]; /* each preset profile's % TMP floor */
    int lost;
    int err[FN_COUNT];
    unsigned int delay_ms[FN_COUNT]; /* a slow driver: the call takes this long */
};

static struct {
    pthread_mutex_t mu;
    int refcount;
    unsigned int count;
    char driver_version[80];
    int init_err;            /* nvmlInit fails with this */
    int count_err;           /* nvmlDeviceGetCount fails with this */
    int bad_state;           /* the state file did not parse: every call fails (message on stderr) */
    struct gpu gpus[MAX_GPUS];
    struct nvmlDevice_st handles[MAX_GPUS];
    /* identity of the state file as last read, to notice changes */
    int have_stat;
    dev_t st_dev;
    ino_t st_ino;
    off_t st_size;
    struct timespec st_mtim;
} S = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void set_defaults(void) {
    S.count = 8;
    snprintf(S.driver_version, sizeof S.driver_version, "%s", "550.54.15");
    S.init_err = NVML_SUCCESS;
    S.count_err = NVML_SUCCESS;
    S.bad_state = 0;
    for (unsigned int i = 0; i < MAX_GPUS; i++) {
        struct gpu *g = &S.gpus[i];
        memset(g, 0, sizeof *g);
        snprintf(g->name, sizeof g->name, "%s", "NVIDIA H100 80GB HBM3");
        snprintf(g->uuid, sizeof g->uuid, "GPU-fa4e0000-0000-4000-8000-%012x", i);
        g->power_mw = 120000;
        g->limit_mw = g->default_limit_mw = g->max_limit_mw = g->ext_limit_mw = 700000;
        g->min_limit_mw = 200000;
        g->temp_c = 40;
        g->clock_mhz[NVML_CLOCK_GRAPHICS] = g->clock_mhz[NVML_CLOCK_SM] = 1980;
        g->clock_mhz[NVML_CLOCK_MEM] = 2619;
        g->clock_mhz[NVML_CLOCK_VIDEO] = 1545;
        g->util_gpu = 0;
        g->util_mem = 0;
        g->reasons = 0;
        g->energy_mj = 0;
        g->min_sm_clock_mhz = 345; /* H100 SXM: 345..1980 MHz in 15 MHz steps (nvidia-smi -q -d SUPPORTED_CLOCKS) */
        g->max_sm_clock_mhz = 1980;
        g->clock_step_mhz = 15;
        S.handles[i].index = i;
    }
}

static const struct { const char *name; int code; } ERRS[] = {
    {"UNINITIALIZED", NVML_ERROR_UNINITIALIZED}, {"INVALID_ARGUMENT", NVML_ERROR_INVALID_ARGUMENT},
    {"NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED}, {"NO_PERMISSION", NVML_ERROR_NO_PERMISSION},
    {"NOT_FOUND", NVML_ERROR_NOT_FOUND}, {"INSUFFICIENT_POWER", NVML_ERROR_INSUFFICIENT_POWER},
    {"DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED}, {"TIMEOUT", NVML_ERROR_TIMEOUT},
    {"IRQ_ISSUE", NVML_ERROR_IRQ_ISSUE}, {"FUNCTION_NOT_FOUND", NVML_ERROR_FUNCTION_NOT_FOUND},
    {"CORRUPTED_INFOROM", NVML_ERROR_CORRUPTED_INFOROM}, {"GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST},
    {"RESET_REQUIRED", NVML_ERROR_RESET_REQUIRED}, {"OPERATING_SYSTEM", NVML_ERROR_OPERATING_SYSTEM},
    {"LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH}, {"IN_USE", NVML_ERROR_IN_USE},
    {"MEMORY", NVML_ERROR_MEMORY}, {"NO_DATA", NVML_ERROR_NO_DATA}, {"NOT_READY", NVML_ERROR_NOT_READY},
    {"GPU_NOT_FOUND", NVML_ERROR_GPU_NOT_FOUND}, {"UNKNOWN", NVML_ERROR_UNKNOWN},
};

static void bad(const char *path, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fake NVML: %s:%d: ", path, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    S.bad_state = 1;
}

/* "ERR_NOT_SUPPORTED" / "ERR_15" / "OK" -> code; -1 if unknown. */
static int parse_err(const char *v) {
    if (strncmp(v, "ERR_", 4) == 0) v += 4;
    if (strcmp(v, "OK") == 0 || strcmp(v, "SUCCESS") == 0 || strcmp(v, "0") == 0) return NVML_SUCCESS;
    for (size_t i = 0; i < sizeof ERRS / sizeof ERRS[0]; i++)
        if (strcmp(v, ERRS[i].name) == 0) return ERRS[i].code;
    char *end;
    long n = strtol(v, &end, 10);
    return (*v && !*end && n > 0) ? (int)n : -1;
}

static int parse_u64(const char *v, unsigned long long *out) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 0); /* 0x... allowed (throttle reasons) */
    if (!*v || *end || errno || *v == '-') return -1;
    *out = n;
    return 0;
}

static void set_gpu_key(struct gpu *g, const char *key, const char *val, const char *path, int line) {
    unsigned long long n = 0;
    if (strncmp(val, "ERR_", 4) == 0 || strcmp(val, "OK") == 0) { /* error injection into one function */
        int code = parse_err(val);
        if (code < 0) {
            bad(path, line, "unknown NVML error '%s'", val);
            return;
        }
        if (strcmp(key, "clock") == 0) { /* every clock domain at once */
            g->err[FN_CLOCK_GRAPHICS] = g->err[FN_CLOCK_SM] = g->err[FN_CLOCK_MEM] = g->err[FN_CLOCK_VIDEO] = code;
            return;
        }
        for (int f = 0; f < FN_COUNT; f++) {
            if (strcmp(key, FN_NAMES[f]) == 0) {
                g->err[f] = code;
                return;
            }
        }
        bad(path, line, "unknown function '%s' for error injection", key);
        return;
    }
    if (strcmp(key, "name") == 0) {
        snprintf(g->name, sizeof g->name, "%s", val);
        return;
    }
    if (strcmp(key, "uuid") == 0) {
        snprintf(g->uuid, sizeof g->uuid, "%s", val);
        return;
    }
    if (parse_u64(val, &n) != 0) {
        bad(path, line, "'%s' is not a non-negative integer", val);
        return;
    }
    if (strncmp(key, "delay_", 6) == 0) { /* delay_<function>=milliseconds */
        for (int f = 0; f < FN_COUNT; f++) {
            if (strcmp(key + 6, FN_NAMES[f]) == 0) {
                g->delay_ms[f] = (unsigned int)n;
                return;
            }
        }
        bad(path, line, "unknown function '%s' for a delay", key + 6);
        return;
    }
    unsigned int u = (unsigned int)n;
    if (strcmp(key, "power_mw") == 0) g->power_mw = u;
    else if (strcmp(key, "limit_mw") == 0) g->limit_mw = u;
    else if (strcmp(key, "default_limit_mw") == 0) g->default_limit_mw = u;
    else if (strcmp(key, "min_limit_mw") == 0) g->min_limit_mw = u;
    else if (strcmp(key, "max_limit_mw") == 0) g->max_limit_mw = u;
    else if (strcmp(key, "ext_limit_mw") == 0) g->ext_limit_mw = u;
    else if (strcmp(key, "temp_c") == 0) g->temp_c = u;
    else if (strcmp(key, "sm_clock_mhz") == 0) g->clock_mhz[NVML_CLOCK_SM] = g->clock_mhz[NVML_CLOCK_GRAPHICS] = u;
    else if (strcmp(key, "graphics_clock_mhz") == 0) g->clock_mhz[NVML_CLOCK_GRAPHICS] = u;
    else if (strcmp(key, "mem_clock_mhz") == 0) g->clock_mhz[NVML_CLOCK_MEM] = u;
    else if (strcmp(key, "video_clock_mhz") == 0) g->clock_mhz[NVML_CLOCK_VIDEO] = u;
    else if (strcmp(key, "util_pct") == 0) g->util_gpu = u;
    else if (strcmp(key, "mem_util_pct") == 0) g->util_mem = u;
    else if (strcmp(key, "reasons") == 0) g->reasons = n;
    else if (strcmp(key, "energy_mj") == 0) g->energy_mj = n;
    else if (strcmp(key, "lost") == 0) g->lost = n != 0;
    else if (strcmp(key, "smoothing_supported") == 0) g->smoothing_supported = n != 0;
    else if (strcmp(key, "min_sm_clock_mhz") == 0) g->min_sm_clock_mhz = u;
    else if (strcmp(key, "max_sm_clock_mhz") == 0) g->max_sm_clock_mhz = u;
    else if (strcmp(key, "clock_step_mhz") == 0) g->clock_step_mhz = u ? u : 1;
    else bad(path, line, "unknown GPU key '%s'", key);
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) *--e = 0;
    return s;
}

/* Reset to defaults and apply the state file, if any. Caller holds S.mu. */
static void load_state(void) {
    set_defaults();
    const char *path = getenv("FAKE_NVML_STATE");
    S.have_stat = 0;
    if (!path || !*path) return;
    struct stat st;
    FILE *f = fopen(path, "r");
    if (!f) {
        bad(path, 0, "cannot open: %s", strerror(errno));
        return;
    }
    if (fstat(fileno(f), &st) == 0) {
        S.have_stat = 1;
        S.st_dev = st.st_dev;
        S.st_ino = st.st_ino;
        S.st_size = st.st_size;
        S.st_mtim = st.st_mtim;
    }
    char buf[512];
    int line = 0;
    while (fgets(buf, sizeof buf, f)) {
        line++;
        char *hash = strchr(buf, '#');
        if (hash) *hash = 0;
        char *s = trim(buf);
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            bad(path, line, "expected key=value");
            continue;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        if (strncmp(key, "gpu", 3) == 0 && strchr(key, '.')) {
            char *dot = strchr(key, '.');
            *dot = 0;
            const char *sel = key + 3, *field = dot + 1;
            if (strcmp(sel, "*") == 0) {
                for (unsigned int i = 0; i < MAX_GPUS; i++) set_gpu_key(&S.gpus[i], field, val, path, line);
            } else {
                unsigned long long idx;
                if (parse_u64(sel, &idx) != 0 || idx >= MAX_GPUS) bad(path, line, "bad GPU index '%s'", sel);
                else set_gpu_key(&S.gpus[idx], field, val, path, line);
            }
        } else if (strcmp(key, "count") == 0) {
            unsigned long long n;
            if (parse_u64(val, &n) != 0 || n > MAX_GPUS) bad(path, line, "count must be 0..%d", MAX_GPUS);
            else S.count = (unsigned int)n;
        } else if (strcmp(key, "driver_version") == 0) {
            snprintf(S.driver_version, sizeof S.driver_version, "%s", val);
        } else if (strcmp(key, "init") == 0 || strcmp(key, "get_count") == 0) {
            int code = parse_err(val);
            if (code < 0) bad(path, line, "unknown NVML error '%s'", val);
            else if (key[0] == 'i') S.init_err = code;
            else S.count_err = code;
        } else {
            bad(path, line, "unknown key '%s'", key);
        }
    }
    fclose(f);
}

/* Re-read the state file if it changed since it was last read. Caller holds S.mu. */
static void refresh_state(void) {
    const char *path = getenv("FAKE_NVML_STATE");
    if (!path || !*path) return;
    struct stat st;
    if (stat(path, &st) != 0) return; /* gone: keep what we have */
    if (S.have_stat && st.st_dev == S.st_dev && st.st_ino == S.st_ino && st.st_size == S.st_size &&
        st.st_mtim.tv_sec == S.st_mtim.tv_sec && st.st_mtim.tv_nsec == S.st_mtim.tv_nsec)
        return;
    load_state();
}

/* Append one line to $FAKE_NVML_LOG (what a test asserts an actuator did). Caller holds S.mu. */
static void log_call(const char *fmt, ...) {
    const char *path = getenv("FAKE_NVML_LOG");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fclose(f);
}

#define LOCK() pthread_mutex_lock(&S.mu)
#define UNLOCK() pthread_mutex_unlock(&S.mu)
#define RETURN(code) do { nvmlReturn_t r_ = (code); UNLOCK(); return r_; } while (0)

/* Lock, check initialisation and the state file; on failure return with the lock released. */
#define ENTER() do {                                                     \
        LOCK();                                                          \
        if (S.refcount == 0) RETURN(NVML_ERROR_UNINITIALIZED);           \
        refresh_state();                                                 \
        if (S.bad_state) RETURN(NVML_ERROR_UNKNOWN);                     \
    } while (0)

/* Resolve a handle to its GPU, or return the error the real library would. Caller holds S.mu. */
static nvmlReturn_t gpu_of(nvmlDevice_t dev, int fn, struct gpu **out) {
    if (!dev || dev < &S.handles[0] || dev >= &S.handles[MAX_GPUS]) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int i = dev->index;
    if (i >= S.count) return NVML_ERROR_INVALID_ARGUMENT;
    struct gpu *g = &S.gpus[i];
    if (g->lost) return NVML_ERROR_GPU_IS_LOST;
    if (fn >= 0 && g->err[fn]) return g->err[fn];
    *out = g;
    return NVML_SUCCESS;
}

/* Sleep as long as the state says this call takes, without holding the lock. Caller holds S.mu. */
static void delay(const struct gpu *g, int fn) {
    if (fn < 0 || !g->delay_ms[fn]) return;
    struct timespec ts = {.tv_sec = g->delay_ms[fn] / 1000, .tv_nsec = (long)(g->delay_ms[fn] % 1000) * 1000000L};
    UNLOCK();
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    LOCK();
}

#define DEVICE(dev, fn, g) struct gpu *g = NULL; do { \
        ENTER();                                      \
        nvmlReturn_t e_ = gpu_of((dev), (fn), &g);    \
        if (e_ != NVML_SUCCESS) RETURN(e_);           \
        delay(g, (fn));                               \
    } while (0)

/* ---- initialisation ---------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    LOCK();
    if (S.refcount == 0) load_state();
    else refresh_state();
    if (S.bad_state) RETURN(NVML_ERROR_UNKNOWN);
    if (S.init_err) RETURN(S.init_err);
    S.refcount++;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

EXPORT nvmlReturn_t nvmlShutdown(void) {
    LOCK();
    if (S.refcount == 0) RETURN(NVML_ERROR_UNINITIALIZED);
    S.refcount--;
    RETURN(NVML_SUCCESS);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_NOT_READY: return "Not ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy_str(char *dst, unsigned int len, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    ENTER();
    RETURN(copy_str(version, length, S.driver_version));
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    ENTER();
    char buf[96];
    snprintf(buf, sizeof buf, "12.%s", S.driver_version);
    RETURN(copy_str(version, length, buf));
}

/* ---- devices ----------------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    ENTER();
    if (!count) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (S.count_err) RETURN(S.count_err);
    *count = S.count;
    RETURN(NVML_SUCCESS);
}
EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    ENTER();
    if (!device || index >= S.count) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    struct gpu *g = &S.gpus[index];
    if (g->lost) RETURN(NVML_ERROR_GPU_IS_LOST);
    if (g->err[FN_HANDLE]) RETURN(g->err[FN_HANDLE]);
    *device = &S.handles[index];
    RETURN(NVML_SUCCESS);
}
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    ENTER();
    if (!uuid || !device) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    for (unsigned int i = 0; i < S.count; i++) {
        if (strcmp(S.gpus[i].uuid, uuid) == 0) {
            if (S.gpus[i].lost) RETURN(NVML_ERROR_GPU_IS_LOST);
            if (S.gpus[i].err[FN_HANDLE]) RETURN(S.gpus[i].err[FN_HANDLE]);
            *device = &S.handles[i];
            RETURN(NVML_SUCCESS);
        }
    }
    RETURN(NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    DEVICE(device, -1, g);
    (void)g;
    if (!index) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *index = device->index;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    DEVICE(device, FN_NAME, g);
    RETURN(copy_str(name, length, g->name));
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    DEVICE(device, FN_UUID, g);
    RETURN(copy_str(uuid, length, g->uuid));
}

/* ---- power ------------------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    DEVICE(device, FN_POWER, g);
    if (!power) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *power = g->power_mw;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    DEVICE(device, FN_ENFORCED_LIMIT, g);
    if (!limit) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *limit = g->limit_mw < g->ext_limit_mw ? g->limit_mw : g->ext_limit_mw;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
    DEVICE(device, FN_LIMIT, g);
    if (!limit) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *limit = g->limit_mw;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device, unsigned int *limit) {
    DEVICE(device, FN_DEFAULT_LIMIT, g);
    if (!limit) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *limit = g->default_limit_mw;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device, unsigned int *min_limit,
                                                                 unsigned int *max_limit) {
    DEVICE(device, FN_CONSTRAINTS, g);
    if (!min_limit || !max_limit) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *min_limit = g->min_limit_mw;
    *max_limit = g->max_limit_mw;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceSetPowerManagementLimit(nvmlDevice_t device, unsigned int limit) {
    DEVICE(device, FN_SET_LIMIT, g);
    if (limit < g->min_limit_mw || limit > g->max_limit_mw) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    g->limit_mw = limit;
    log_call("gpu%u set_limit_mw %u", device->index, limit);
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    DEVICE(device, FN_ENERGY, g);
    if (!energy) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *energy = g->energy_mj;
    RETURN(NVML_SUCCESS);
}

/* ---- thermal, clocks, utilisation --------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, unsigned int sensor, unsigned int *temp) {
    DEVICE(device, FN_TEMP, g);
    if (!temp || sensor != NVML_TEMPERATURE_GPU) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *temp = g->temp_c;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_v1_t *temp) {
    DEVICE(device, FN_TEMP, g);
    if (!temp) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (temp->version != NVML_TEMPERATURE_V1) RETURN(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (temp->sensorType != NVML_TEMPERATURE_GPU) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    temp->temperature = (int)g->temp_c;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, unsigned int type, unsigned int *clock) {
    static const int FN_OF_CLOCK[4] = {FN_CLOCK_GRAPHICS, FN_CLOCK_SM, FN_CLOCK_MEM, FN_CLOCK_VIDEO};
    DEVICE(device, -1, g);
    if (!clock || type > NVML_CLOCK_VIDEO) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (g->err[FN_OF_CLOCK[type]]) RETURN(g->err[FN_OF_CLOCK[type]]);
    unsigned int mhz = g->clock_mhz[type];
    if ((type == NVML_CLOCK_SM || type == NVML_CLOCK_GRAPHICS) && g->locked_max_mhz) {
        if (mhz > g->locked_max_mhz) mhz = g->locked_max_mhz;
        if (mhz < g->locked_min_mhz) mhz = g->locked_min_mhz;
    }
    *clock = mhz;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *util) {
    DEVICE(device, FN_UTIL, g);
    if (!util) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    util->gpu = g->util_gpu;
    util->memory = g->util_mem;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device, unsigned long long *reasons) {
    DEVICE(device, FN_REASONS, g);
    if (!reasons) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *reasons = g->reasons;
    RETURN(NVML_SUCCESS);
}

#ifndef FAKE_NVML_NO_CLOCKS_EVENT_REASONS
EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device, unsigned long long *reasons) {
    return nvmlDeviceGetCurrentClocksThrottleReasons(device, reasons);
}
#endif

EXPORT nvmlReturn_t nvmlDeviceSetGpuLockedClocks(nvmlDevice_t device, unsigned int min_mhz, unsigned int max_mhz) {
    DEVICE(device, FN_SET_LOCKED_CLOCKS, g);
    if (min_mhz > max_mhz || max_mhz == 0 || max_mhz > g->max_sm_clock_mhz) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    g->locked_min_mhz = min_mhz;
    g->locked_max_mhz = max_mhz;
    log_call("gpu%u set_locked_clocks %u %u", device->index, min_mhz, max_mhz);
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceResetGpuLockedClocks(nvmlDevice_t device) {
    DEVICE(device, FN_RESET_LOCKED_CLOCKS, g);
    g->locked_min_mhz = g->locked_max_mhz = 0;
    log_call("gpu%u reset_locked_clocks", device->index);
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t device, unsigned int type, unsigned int *clock) {
    DEVICE(device, FN_MAX_CLOCK, g);
    if (!clock || type > NVML_CLOCK_VIDEO) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *clock = (type == NVML_CLOCK_SM || type == NVML_CLOCK_GRAPHICS) ? g->max_sm_clock_mhz : g->clock_mhz[type];
    RETURN(NVML_SUCCESS);
}

/* NVML's two-call pattern: a short (or NULL) buffer gets INSUFFICIENT_SIZE and the count needed. */
static nvmlReturn_t fill_clocks(unsigned int *count, unsigned int *clocks, const unsigned int *list, unsigned int n) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int room = *count;
    *count = n;
    if (!clocks || room < n) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(clocks, list, n * sizeof *list);
    return NVML_SUCCESS;
}

/* One memory clock: the current one (an H100 has only 2619 MHz). */
EXPORT nvmlReturn_t nvmlDeviceGetSupportedMemoryClocks(nvmlDevice_t device, unsigned int *count, unsigned int *clocks) {
    DEVICE(device, FN_SUPPORTED_CLOCKS, g);
    RETURN(fill_clocks(count, clocks, &g->clock_mhz[NVML_CLOCK_MEM], 1));
}

/* Supported graphics clocks for a memory clock, highest first as NVML lists them. */
EXPORT nvmlReturn_t nvmlDeviceGetSupportedGraphicsClocks(nvmlDevice_t device, unsigned int mem_mhz, unsigned int *count,
                                                         unsigned int *clocks) {
    static unsigned int list[4096];
    DEVICE(device, FN_SUPPORTED_CLOCKS, g);
    if (mem_mhz != g->clock_mhz[NVML_CLOCK_MEM]) RETURN(NVML_ERROR_NOT_FOUND);
    unsigned int n = 0;
    for (unsigned int f = g->max_sm_clock_mhz; f >= g->min_sm_clock_mhz && n < 4096; f -= g->clock_step_mhz) {
        list[n++] = f;
        if (f < g->clock_step_mhz) break;
    }
    RETURN(fill_clocks(count, clocks, list, n));
}

/* ---- power smoothing (Blackwell and newer) -------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDevicePowerSmoothingUpdatePresetProfileParam(nvmlDevice_t device,
                                                                    nvmlPowerSmoothingProfile_v1_t *profile) {
    DEVICE(device, FN_SMOOTHING, g);
    if (!g->smoothing_supported) RETURN(NVML_ERROR_NOT_SUPPORTED);
    if (!profile) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (profile->version != NVML_POWER_SMOOTHING_PROFILE_V1) RETURN(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (profile->profileId >= NVML_POWER_SMOOTHING_MAX_NUM_PROFILES ||
        profile->paramId >= NVML_POWER_SMOOTHING_NUM_PROFILE_PARAMS) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (profile->paramId == NVML_POWER_SMOOTHING_PROFILE_PARAM_PERCENT_TMP_FLOOR) {
        if (profile->value < 0.0 || profile->value > 100.0) RETURN(NVML_ERROR_INVALID_ARGUMENT);
        g->floor_pct[profile->profileId] = profile->value;
    }
    log_call("gpu%u smoothing_param %u %u %.2f", device->index, profile->profileId, profile->paramId,
             profile->value);
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDevicePowerSmoothingActivatePresetProfile(nvmlDevice_t device,
                                                                 nvmlPowerSmoothingProfile_v1_t *profile) {
    DEVICE(device, FN_SMOOTHING, g);
    if (!g->smoothing_supported) RETURN(NVML_ERROR_NOT_SUPPORTED);
    if (!profile) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (profile->version != NVML_POWER_SMOOTHING_PROFILE_V1) RETURN(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (profile->profileId >= NVML_POWER_SMOOTHING_MAX_NUM_PROFILES) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    g->smoothing_profile = profile->profileId;
    log_call("gpu%u smoothing_profile %u", device->index, profile->profileId);
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDevicePowerSmoothingSetState(nvmlDevice_t device, nvmlPowerSmoothingState_v1_t *state) {
    DEVICE(device, FN_SMOOTHING, g);
    if (!g->smoothing_supported) RETURN(NVML_ERROR_NOT_SUPPORTED);
    if (!state || state->state > 1) RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (state->version != NVML_POWER_SMOOTHING_STATE_V1) RETURN(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    g->smoothing_on = state->state;
    log_call("gpu%u smoothing_state %u", device->index, state->state);
    RETURN(NVML_SUCCESS);
}
