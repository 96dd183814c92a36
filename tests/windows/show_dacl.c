/* Test-only: prints the DACL of a file or directory in SDDL, so the Wine tests can check what
 * the agent set on its data directory and credentials file. Never shipped.
 *
 * Usage: show_dacl.exe PATH */
#include <windows.h>
#include <aclapi.h>
#include <sddl.h>
#include <stdio.h>

int wmain(int argc, wchar_t **argv) {
  if (argc != 2) return 2;
  PSECURITY_DESCRIPTOR sd = NULL;
  PACL dacl = NULL;
  DWORD status = GetNamedSecurityInfoW(argv[1], SE_FILE_OBJECT, DACL_SECURITY_INFORMATION, NULL,
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
