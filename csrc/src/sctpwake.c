/* Data-channel sending without GStreamer's 100 ms sleeps when the SCTP send buffer is full.
 *
 * GStreamer's sctpenc (1.22 .. 1.26) hands each message to usrsctp; when usrsctp's send buffer is full it waits on
 * a condition with a 100 ms timeout. The only wake-up is an outgoing SCTP packet. When everything in the buffer is
 * already in flight (the congestion window is larger than the buffer, as on any fast path), the peer's SACK frees
 * the buffer but makes no packet go out, so the sender sleeps out the 100 ms: with 16 KiB messages it waited 0.53 s
 * of a 1.9 s transfer. The plugin exposes no setting for this, and usrsctp is linked into it with hidden symbols.
 *
 * So the sctp plugin's own call to g_cond_wait_until (its GOT slot, nothing else in the process) goes through
 * capped_wait_until, which waits at most SCTP_RETRY_US: sctpenc's loop then retries the send, as it does after its
 * timeout. A wake-up by an outgoing packet still comes at once. The cost is one failed usrsctp send per retry
 * while the buffer stays full.
 *
 * The slot is found with dl_iterate_phdr in the loaded libgstsctp.so (its JUMP_SLOT / GLOB_DAT relocations for
 * g_cond_wait_until); a slot under RELRO is made writable for the store. If anything is not as expected (no such
 * plugin, no such relocation), nothing is changed. SORA_SDK_SCTP_SLEEP=1 leaves the plugin as it is. */
#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define SCTP_RETRY_US 2000 /* 2 ms */

#if defined(__x86_64__)
#define SLOT_JUMP R_X86_64_JUMP_SLOT
#define SLOT_DATA R_X86_64_GLOB_DAT
#elif defined(__aarch64__)
#define SLOT_JUMP R_AARCH64_JUMP_SLOT
#define SLOT_DATA R_AARCH64_GLOB_DAT
#endif

typedef gboolean (*wait_until_fn)(GCond *cond, GMutex *mutex, gint64 end_time);

static gboolean capped_wait_until(GCond *cond, GMutex *mutex, gint64 end_time) {
  gint64 soon = g_get_monotonic_time() + SCTP_RETRY_US;
  return g_cond_wait_until(cond, mutex, MIN(end_time, soon));
}

typedef struct {
  const char *path; /* the plugin's file, as GStreamer loaded it */
  int patched;      /* slots changed */
} find_ctx;

/* Store `value` at `slot` (a GOT entry of the object at `info`), lifting RELRO's read-only for the store. */
static gboolean store_slot(struct dl_phdr_info *info, void **slot, void *value) {
  uintptr_t addr = (uintptr_t)slot;
  int relro = 0;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type == PT_GNU_RELRO && addr >= info->dlpi_addr + ph->p_vaddr &&
        addr < info->dlpi_addr + ph->p_vaddr + ph->p_memsz)
      relro = 1;
  }
  long page = sysconf(_SC_PAGESIZE);
  void *start = (void *)(addr & ~((uintptr_t)page - 1));
  if (relro && mprotect(start, (size_t)page, PROT_READ | PROT_WRITE) != 0) return FALSE;
  __atomic_store_n(slot, value, __ATOMIC_RELEASE);
  if (relro) mprotect(start, (size_t)page, PROT_READ);
  return TRUE;
}

#ifdef SLOT_JUMP
static int patch_object(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  find_ctx *ctx = data;
  if (!info->dlpi_name || !ctx->path || strcmp(info->dlpi_name, ctx->path) != 0) return 0;
  const ElfW(Dyn) *dyn = NULL;
  for (int i = 0; i < info->dlpi_phnum; i++)
    if (info->dlpi_phdr[i].p_type == PT_DYNAMIC) dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
  if (!dyn) return 1;
  const ElfW(Sym) *symtab = NULL;
  const char *strtab = NULL;
  const ElfW(Rela) *tables[2] = {NULL, NULL};
  size_t sizes[2] = {0, 0};
  /* (glibc has made the pointers of the dynamic section absolute; an offset would be below the load address) */
#define DYN_PTR(type) ((type)(dyn->d_un.d_ptr < info->dlpi_addr ? info->dlpi_addr + dyn->d_un.d_ptr : dyn->d_un.d_ptr))
  for (; dyn->d_tag != DT_NULL; dyn++) {
    switch (dyn->d_tag) {
      case DT_SYMTAB: symtab = DYN_PTR(const ElfW(Sym) *); break;
      case DT_STRTAB: strtab = DYN_PTR(const char *); break;
      case DT_JMPREL: tables[0] = DYN_PTR(const ElfW(Rela) *); break;
      case DT_PLTRELSZ: sizes[0] = dyn->d_un.d_val; break;
      case DT_RELA: tables[1] = DYN_PTR(const ElfW(Rela) *); break;
      case DT_RELASZ: sizes[1] = dyn->d_un.d_val; break;
      default: break;
    }
  }
  if (!symtab || !strtab) return 1;
  for (int t = 0; t < 2; t++) {
    if (!tables[t]) continue;
    for (size_t i = 0; i < sizes[t] / sizeof(ElfW(Rela)); i++) {
      const ElfW(Rela) *r = &tables[t][i];
      unsigned long type = ELF64_R_TYPE(r->r_info);
      if (type != SLOT_JUMP && type != SLOT_DATA) continue;
      const ElfW(Sym) *sym = &symtab[ELF64_R_SYM(r->r_info)];
      if (strcmp(strtab + sym->st_name, "g_cond_wait_until") != 0) continue;
      if (store_slot(info, (void **)(info->dlpi_addr + r->r_offset), (void *)(wait_until_fn)capped_wait_until))
        ctx->patched++;
    }
  }
  return 1;
}
#endif

static GMutex wake_lock;
static gboolean wake_done;

void sora_sctp_wake_install(void) {
  g_mutex_lock(&wake_lock);
  if (!wake_done) {
    wake_done = TRUE;
    const char *off = g_getenv("SORA_SDK_SCTP_SLEEP");
    GstPlugin *plugin = (off && *off && strcmp(off, "0") != 0) ? NULL : gst_registry_find_plugin(gst_registry_get(), "sctp");
    GstPlugin *loaded = plugin ? gst_plugin_load(plugin) : NULL; /* (the file must be mapped before its GOT is seen) */
    find_ctx ctx = {loaded ? gst_plugin_get_filename(loaded) : NULL, 0};
#ifdef SLOT_JUMP
    if (ctx.path) dl_iterate_phdr(patch_object, &ctx);
#endif
    GST_DEBUG("sctp send-buffer wake-up: %d slot(s) of %s", ctx.patched, ctx.path ? ctx.path : "(no sctp plugin)");
    if (loaded) gst_object_unref(loaded);
    if (plugin) gst_object_unref(plugin);
  }
  g_mutex_unlock(&wake_lock);
}
