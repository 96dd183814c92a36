/* Test-only stand-in for ProcessPrng (bcryptprimitives.dll), which Rust's standard library
 * imports and Wine 8.0 lacks. Built by the Wine tests (tests/tests/windows) and placed beside
 * the .exe under test; never shipped: real Windows 10/11 have the function. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom, advapi32 */

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
  while (len) {
    ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
    if (!SystemFunction036(data, n)) return FALSE;
    data += n;
    len -= n;
  }
  return TRUE;
}
