/* Test-only Win32 program for the Wine tests (tests/tests/windows): one top-level window whose
 * title follows the first line of a UTF-8 text file, re-read every 100 ms, so a test can
 * retitle a real Win32 window the way an application does (SetWindowTextW). The process ends
 * when the file is deleted or the window is closed. Copied under several executable names to
 * play several applications. Never shipped.
 *
 * Usage: test_window.exe TITLE_FILE
 *        test_window.exe --screensaver FLAG_FILE   (reports a running screensaver, as a
 *                                                   screensaver host does, while FLAG_FILE
 *                                                   exists) */
#include <windows.h>

static WCHAR title_file[MAX_PATH];
static WCHAR current[1024];

static BOOL read_title(WCHAR *out, int out_len) {
  HANDLE f = CreateFileW(title_file, GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                         NULL, OPEN_EXISTING, 0, NULL);
  if (f == INVALID_HANDLE_VALUE) return FALSE;
  char bytes[2048];
  DWORD n = 0;
  BOOL ok = ReadFile(f, bytes, sizeof bytes - 1, &n, NULL);
  CloseHandle(f);
  if (!ok) return FALSE;
  bytes[n] = 0;
  for (DWORD i = 0; i < n; i++)
    if (bytes[i] == '\r' || bytes[i] == '\n') { bytes[i] = 0; break; }
  int len = MultiByteToWideChar(CP_UTF8, 0, bytes, -1, out, out_len);
  return len > 0;
}

static LRESULT CALLBACK window_proc(HWND hwnd, UINT msg, WPARAM wparam, LPARAM lparam) {
  switch (msg) {
  case WM_TIMER: {
    WCHAR title[1024];
    if (!read_title(title, 1024)) {
      DestroyWindow(hwnd);
      return 0;
    }
    if (lstrcmpW(title, current) != 0) {
      lstrcpyW(current, title);
      SetWindowTextW(hwnd, current);
    }
    return 0;
  }
  case WM_DESTROY:
    PostQuitMessage(0);
    return 0;
  }
  return DefWindowProcW(hwnd, msg, wparam, lparam);
}

int WINAPI wWinMain(HINSTANCE instance, HINSTANCE prev, PWSTR cmdline, int show) {
  (void)prev;
  int argc = 0;
  LPWSTR *argv = CommandLineToArgvW(GetCommandLineW(), &argc);
  if (argc < 2) return 2;
  if (argc == 3 && lstrcmpW(argv[1], L"--screensaver") == 0) {
    BOOL old = FALSE;
    SystemParametersInfoW(SPI_SETSCREENSAVERRUNNING, TRUE, &old, 0);
    while (GetFileAttributesW(argv[2]) != INVALID_FILE_ATTRIBUTES) Sleep(100);
    SystemParametersInfoW(SPI_SETSCREENSAVERRUNNING, FALSE, &old, 0);
    return 0;
  }
  lstrcpynW(title_file, argv[1], MAX_PATH);
  if (!read_title(current, 1024)) return 3;
  WNDCLASSW wc = {0};
  wc.lpfnWndProc = window_proc;
  wc.hInstance = instance;
  wc.lpszClassName = L"BacklightTestWindow";
  wc.hbrBackground = (HBRUSH)(COLOR_WINDOW + 1);
  wc.hCursor = LoadCursorW(NULL, (LPCWSTR)IDC_ARROW);
  RegisterClassW(&wc);
  HWND hwnd = CreateWindowExW(0, wc.lpszClassName, current, WS_OVERLAPPEDWINDOW, 50, 50, 500, 300,
                              NULL, NULL, instance, NULL);
  if (!hwnd) return 4;
  ShowWindow(hwnd, show ? show : SW_SHOWNORMAL);
  UpdateWindow(hwnd);
  SetTimer(hwnd, 1, 100, NULL);
  MSG msg;
  while (GetMessageW(&msg, NULL, 0, 0) > 0) {
    TranslateMessage(&msg);
    DispatchMessageW(&msg);
  }
  return 0;
}
