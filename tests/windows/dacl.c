/* Test-only: reads or replaces the DACL of a file or directory in SDDL, so the Wine tests can
 * check what the agent set on its data directory and credentials file, and open a secret file
 * to others to see the agent refuse it. Never shipped.
 *
 * Usage: dacl.exe show PATH
 *        dacl.exe set PATH SDDL   (e.g. "D:P(A;;FA;;;WD)": Everyone may do anything) */
#include <windows.h>
#include <aclapi.h>
#include <sddl.h>
#include <stdio.h>

static int show(const wchar_t *path) {
  PSECURITY_DESCRIPTOR sd = NULL;
  PACL dacl = NULL;
  DWORD status = GetNamedSecurityInfoW(path, SE_FILE_OBJECT, DACL_SECURITY_INFORMATION, NULL,
                                       NULL, &dacl, NULL, &sd);
  if (status != ERROR_SUCCESS) {
    fprintf(stderr, "GetNamedSecurityInfoW failed: %lu\n", status);
    return 1;
  }
  LPWSTR text = NULL;
  if (!ConvertSecurityDescriptorToStringSecurityDescriptorW(sd, SDDL_REVISION_1,
                                                            DACL_SECURITY_INFORMATION, &text, NULL)) {
    fprintf(stderr, "cannot convert the descriptor: %lu\n", GetLastError());
    return 1;
  }
  wprintf(L"%ls\n", text);
  LocalFree(text);
  LocalFree(sd);
  return 0;
}

static int set(const wchar_t *path, const wchar_t *sddl) {
  PSECURITY_DESCRIPTOR sd = NULL;
  if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl, SDDL_REVISION_1, &sd, NULL)) {
    fprintf(stderr, "cannot parse the SDDL: %lu\n", GetLastError());
    return 1;
  }
  /* SetFileSecurityW: the call the agent itself uses, and the one Wine implements for files. */
  BOOL ok = SetFileSecurityW(path, DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                             sd);
  LocalFree(sd);
  if (!ok) {
    fprintf(stderr, "SetFileSecurityW failed: %lu\n", GetLastError());
    return 1;
  }
  return 0;
}

int wmain(int argc, wchar_t **argv) {
  if (argc == 3 && wcscmp(argv[1], L"show") == 0) return show(argv[2]);
  if (argc == 4 && wcscmp(argv[1], L"set") == 0) return set(argv[2], argv[3]);
  fprintf(stderr, "usage: dacl.exe show PATH | dacl.exe set PATH SDDL\n");
  return 2;
}
